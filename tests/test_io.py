"""Video I/O round trips: H.264 mp4 (lossy: PSNR), GIF (palette: closeness), images, contact sheets."""

import numpy as np
import pytest
import torch

from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.errors import PyramidflowError
from pyramidflow.io import VideoReadError, contact_sheet, probe, read_frames, read_video, write_video


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def clip():
    return ShapesDataset(32, 12, seed=5)[0]["video"]  # (12, 3, 32, 32)


@pytest.mark.parametrize("shape", [(32, 32), (31, 45)])
def test_mp4_round_trip(tmp_path, clip, shape):
    x = torch.nn.functional.interpolate(clip, size=shape, mode="bilinear")
    path = write_video(tmp_path / "a.mp4", x, fps=12)
    info = probe(path)
    assert (info.width, info.height, info.fps, info.num_frames) == (shape[1], shape[0], 12.0, 12)
    assert info.duration == pytest.approx(1.0)
    y, fps = read_video(path)
    assert fps == 12.0 and y.shape == x.shape and y.dtype == torch.float32
    assert psnr(x, y) > 27  # lossy (and 4:2:0 chroma on 32-pixel frames), but close
    assert psnr(x, y) > psnr(x, y[torch.arange(12).roll(1)]) + 5  # frames come back in order


def test_uint8_input_and_resampled_reading(tmp_path, clip):
    u8 = (clip * 255).round().to(torch.uint8)
    path = write_video(tmp_path / "u.mp4", u8, fps=8)
    y, fps = read_video(path, fps=4)  # every other frame
    assert fps == 4 and len(y) == 6
    full, _ = read_video(path)
    assert torch.allclose(y, full[::2])
    up, _ = read_frames(path, fps=16)
    assert len(up) == 24  # each source frame shown twice


def test_gif_round_trip_keeps_repeated_frames(tmp_path, clip):
    x = torch.cat([clip[:4], clip[4:5].repeat(4, 1, 1, 1), clip[8:]])  # 4 identical frames in a row
    path = write_video(tmp_path / "a.gif", x, fps=10)
    y, fps = read_video(path)
    assert fps == pytest.approx(10) and y.shape == x.shape
    assert (y - x).abs().max() < 0.05  # an adaptive palette holds these few colours almost exactly


def test_image_is_a_one_frame_video(tmp_path, clip):
    path = write_video(tmp_path / "f.png", clip[:1])
    y, _ = read_video(path)
    assert y.shape == (1, 3, 32, 32) and (y - clip[:1]).abs().max() < 1 / 255 + 1e-6
    with pytest.raises(PyramidflowError, match="one frame"):
        write_video(tmp_path / "g.png", clip[:2])


def test_bad_writes_and_reads(tmp_path, clip):
    with pytest.raises(PyramidflowError, match=".mp4"):
        write_video(tmp_path / "a.avi", clip)
    with pytest.raises(PyramidflowError, match=r"\(T, 3, H, W\)"):
        write_video(tmp_path / "a.mp4", clip[:, :2])
    with pytest.raises(VideoReadError) as err:
        read_video(tmp_path / "missing.mp4")
    assert err.value.reason == "missing"
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoReadError) as err:
        read_video(tmp_path / "empty.mp4")
    assert err.value.reason == "empty"
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 50)
    with pytest.raises(VideoReadError) as err:
        read_video(tmp_path / "junk.mp4")
    assert err.value.reason == "unreadable"
    path = write_video(tmp_path / "b.mp4", clip, fps=8)
    with pytest.raises(VideoReadError) as err:
        read_frames(path, num_frames=20)
    assert err.value.reason == "too short" and "need 20" in str(err.value)


def test_contact_sheet(tmp_path):
    from PIL import Image

    ds = ShapesDataset(32, 10, seed=1)
    items = [ds[i] for i in range(3)]
    videos, captions = [i["video"] for i in items], [i["text"] for i in items]
    path = contact_sheet(videos, captions, tmp_path / "s.png", max_frames=5)
    img = np.asarray(Image.open(path).convert("RGB"))
    # 3 rows of 5 cells of 96x96 (32 px upscaled x3) plus captions: height and width add up
    assert img.shape[1] == 4 + 5 * (96 + 4)
    assert img.shape[0] > 3 * 96
    first = img[4 + 13 + 4 : 4 + 13 + 4 + 96, 4 : 4 + 96]  # first frame of the first clip
    small = np.asarray(Image.fromarray(first).resize((32, 32), Image.Resampling.NEAREST)) / 255.0
    assert np.abs(small - items[0]["video"][0].permute(1, 2, 0).numpy()).max() < 0.01
    with pytest.raises(PyramidflowError, match="captions"):
        contact_sheet([items[0]["video"]], ["a", "b"], tmp_path / "t.png")


@pytest.mark.parametrize("name", ["a.gif", "a.mp4", "a.png", "a.jpg"])
def test_damaged_files_raise_video_read_error_only(tmp_path, clip, name):
    """Truncated or bit-flipped files either decode or raise VideoReadError, never anything else
    (a stray IndexError from a decoder would end a long training run)."""
    good = write_video(tmp_path / name, clip if name.endswith(("gif", "mp4")) else clip[:1], fps=10)
    data = np.frombuffer(good.read_bytes(), np.uint8)
    rng = np.random.default_rng(0)
    cases = [data[:n] for n in np.linspace(1, len(data) - 1, 40).astype(int)]
    for _ in range(80):
        flipped = data.copy()
        flipped[rng.integers(0, len(data), 4)] = rng.integers(0, 256, 4)
        cases.append(flipped)
    bad = tmp_path / ("bad" + good.suffix)
    failures = 0
    for case in cases:
        bad.write_bytes(case.tobytes())
        try:
            frames, _ = read_frames(bad, fps=10, size=(16, 16))
            assert frames.shape[1:] == (16, 16, 3) and frames.dtype == np.uint8
        except VideoReadError as err:
            failures += 1
            assert err.reason in {"unreadable", "no video stream", "corrupt or truncated", "too short"}
    assert failures >= 10  # most damage is noticed


def test_other_containers_and_codecs_decode(tmp_path, clip):
    import av

    frames = (clip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (12, 32, 32, 3)
    formats = (("a.mkv", "libx264"), ("a.avi", "mpeg4"), ("a.webm", "libvpx-vp9"), ("a.mov", "mpeg4"))
    for name, codec in formats:
        with av.open(str(tmp_path / name), "w") as container:
            stream = container.add_stream(codec, rate=12)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        y, fps = read_video(tmp_path / name)
        assert fps == pytest.approx(12) and y.shape == clip.shape, name
        assert psnr(clip, y) > 24, name


def test_mp4_is_h264(tmp_path, clip):
    import av

    with av.open(str(write_video(tmp_path / "a.mp4", clip, fps=8))) as container:
        assert container.streams.video[0].codec_context.name == "h264"
