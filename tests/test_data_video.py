"""Real-video datasets: decoding, fps resampling, resize + crop, clips with a stride, images, bad
files skipped with one warning and counted, manifests, workers, and the data CLI."""

import json
import os

import numpy as np
import pytest
import torch

from pyramidflow.cli import main
from pyramidflow.data.manifest import ManifestDataset, write_manifest
from pyramidflow.data.video import SkippedInputWarning, VideoFolderDataset
from pyramidflow.errors import PyramidflowError
from pyramidflow.io import write_video

RED, GREEN = (0.9, 0.1, 0.1), (0.1, 0.8, 0.1)


def counter_clip(frames: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """Frame k is uniform gray 8 k / 255 (a frame counter that survives compression)."""
    levels = torch.arange(frames, dtype=torch.float32) * 8 / 255
    return levels.view(-1, 1, 1, 1).expand(frames, 3, h, w).clone()


def banner_clip(frames: int = 6) -> torch.Tensor:
    """48x64 frames: green, with a red band over the top 4 rows and the left 8 columns."""
    x = torch.tensor(GREEN).view(1, 3, 1, 1).repeat(frames, 1, 48, 64)
    x[:, :, :4, :] = torch.tensor(RED).view(1, 3, 1, 1)
    x[:, :, :, :8] = torch.tensor(RED).view(1, 3, 1, 1)
    return x


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    good = {
        "count24.mp4": (counter_clip(30), 24),  # 1.25 s
        "banner.mp4": (banner_clip(), 6),
        "anim.gif": (counter_clip(10), 10),
        "still.png": (banner_clip(1), 1),
    }
    for name, (clip, fps) in good.items():
        write_video(root / name, clip, fps=fps)
        (root / name).with_suffix(".txt").write_text(f"caption of {name}\n")
    for name in BAD:
        (root / name).with_suffix(".txt").write_text("bad\n")
    (root / "empty.mp4").write_bytes(b"")
    mp4 = (root / "count24.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])
    gif = (root / "anim.gif").read_bytes()
    (root / "cut.gif").write_bytes(gif[: len(gif) // 3])
    write_video(root / "short.mp4", counter_clip(2), fps=8)
    return root


BAD = {"empty.mp4", "cut.mp4", "cut.gif", "short.mp4"}
# Skips are checked explicitly where they matter; elsewhere their warnings are noise.
pytestmark = pytest.mark.filterwarnings("ignore::pyramidflow.data.video.SkippedInputWarning")


def test_fps_resampling_picks_the_right_source_frames(media):
    ds = VideoFolderDataset(media, frames=8, size=32, fps=8, images="skip")
    item = next(ds[i] for i in range(len(ds)) if ds[i]["path"].endswith("count24.mp4"))
    levels = item["video"].mean((1, 2, 3)) * 255 / 8  # source frame index of each output frame
    assert np.allclose(levels.numpy(), 3 * np.arange(8), atol=0.5)  # 24 -> 8 fps: every third frame
    assert item["meta"]["fps"] == 8 and item["meta"]["source_fps"] == 24
    assert item["text"] == "caption of count24.mp4"


def test_resize_shorter_side_and_centre_crop(media):
    ds = VideoFolderDataset(media, frames=4, size=32)
    item = next(ds[i] for i in range(len(ds)) if ds[i]["path"].endswith("banner.mp4"))
    v = item["video"]  # 48x64 -> 32x43 -> central 32x32
    assert v.shape == (4, 3, 32, 32)
    red, green = torch.tensor(RED).view(3, 1), torch.tensor(GREEN).view(3, 1)
    assert (v[0, :, 0, 8:24] - red).abs().max() < 0.12  # the top band survives (rows scale 2/3)
    assert (v[0, :, 16, 2:30] - green).abs().max() < 0.12  # the left band is cropped away
    assert (v[0, :, 16:, 16] - green).abs().max() < 0.12


def test_clips_with_a_stride(media):
    ds = VideoFolderDataset(media, frames=4, size=16, fps=8, stride=3, images="skip")
    starts = [s for k, s in ds.clips if ds.entries[k].path.endswith("count24.mp4")]
    assert starts == [0, 3, 6]  # 1.25 s at 8 fps = 10 frames -> starts 0, 3, 6
    i = next(i for i, (k, s) in enumerate(ds.clips) if s == 6 and ds.entries[k].path.endswith("count24.mp4"))
    levels = ds[i]["video"].mean((1, 2, 3)) * 255 / 8
    assert np.allclose(levels.numpy(), 3 * np.arange(6, 10), atol=0.5)
    assert ds[i]["meta"]["start"] == pytest.approx(0.75)


def test_images_single_repeat_skip(media):
    def image_item(**kw):
        ds = VideoFolderDataset(media, frames=5, size=16, **kw)
        return [ds[i] for i in range(len(ds)) if ds[i]["path"].endswith(".png")]

    assert image_item()[0]["video"].shape == (1, 3, 16, 16)
    rep = image_item(images="repeat")[0]["video"]
    assert rep.shape == (5, 3, 16, 16) and torch.equal(rep[0], rep[4])
    assert image_item(images="skip") == []


def test_bad_files_are_skipped_with_one_warning_each_and_counted(media):
    ds = VideoFolderDataset(media, frames=8, size=16, fps=8)
    with pytest.warns(SkippedInputWarning) as record:
        items = [ds[i] for i in range(len(ds))]
        again = [ds[i] for i in range(len(ds))]  # no second warning for the same file
    messages = [str(w.message) for w in record if issubclass(w.category, SkippedInputWarning)]
    assert len(messages) == len(BAD)
    for name in BAD:
        assert sum(name in m for m in messages) == 1
    assert ds.skipped.count == len(BAD)
    reasons = ds.skipped.reasons()
    assert reasons["empty"] == 1 and reasons["too short"] >= 1 and sum(reasons.values()) == len(BAD)
    assert set(reasons) <= {"empty", "unreadable", "corrupt or truncated", "too short"}
    # every item is a real clip from a good file (bad ones replaced by the next usable clip)
    for item in items + again:
        assert item["path"].rsplit("/", 1)[1] not in BAD
        assert item["video"].shape in ((8, 3, 16, 16), (1, 3, 16, 16))
        assert torch.isfinite(item["video"]).all()


def test_check_reports_every_file(media):
    report = VideoFolderDataset(media, frames=8, size=16, fps=8).check()
    assert report["ok"] == 4 and report["skipped"] == len(BAD)
    assert sum(report["reasons"].values()) == len(BAD)
    assert {f["path"].rsplit("/", 1)[1] for f in report["files"]} == BAD


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_manifest_rows_relative_paths_and_bad_rows(media, tmp_path, suffix):
    """Relative paths stay inside the manifest's folder (``../`` out of it is refused, row by row);
    absolute paths are used as written."""
    outside = tmp_path / "outside.mp4"  # exists, but out of the manifest's folder
    outside.write_bytes((media / "count24.mp4").read_bytes())
    rows = [{"video": str(media / "count24.mp4"), "text": "absolute"},
            {"video": "anim.gif", "text": "relative"},
            {"video": "nowhere.mp4", "text": "missing"},
            {"video": os.path.relpath(outside, media), "text": "escapes"},
            {"video": f"../{media.name}/still.png", "text": "inside after .."}]
    manifest = write_manifest(media / f"m{suffix}", rows)
    if suffix == ".jsonl":
        with open(manifest, "a") as fh:
            fh.write("{broken json\n")
    with pytest.warns(SkippedInputWarning, match="outside the manifest's folder.*write an absolute path"):
        ds = ManifestDataset(manifest, frames=6, size=16, fps=8)
    assert len(ds) == 3 and [ds[i]["text"] for i in range(3)] == ["absolute", "relative", "inside after .."]
    assert ds[1]["video"].shape == (6, 3, 16, 16)
    expected = {"missing": 1, "outside the manifest's folder": 1}
    expected |= {"malformed row": 1} if suffix == ".jsonl" else {}
    assert ds.skipped.reasons() == expected


@pytest.mark.parametrize("caption", [3, ["a", "b"], None, {"text": "x"}])
def test_manifest_captions_must_be_strings(media, caption):
    """Reproduces: a non-string caption was silently read as ""."""
    manifest = media.parent / "captions.jsonl"
    manifest.write_text(json.dumps({"video": f"{media.name}/anim.gif", "text": "fine"}) + "\n"
                        + json.dumps({"video": f"{media.name}/banner.mp4", "caption": caption}) + "\n")
    with pytest.raises(PyramidflowError, match=rf"{manifest}:2: the caption \('caption'\) must be a string"):
        ManifestDataset(manifest, frames=4, size=16)
    assert main(["data", "check", "--manifest", str(manifest), "--frames", "4", "--size", "16"]) == 2


def test_workers_decode_in_parallel(media):
    ds = VideoFolderDataset(media, frames=4, size=16, fps=8, images="repeat")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert sum(len(b["video"]) for b in batches) == len(ds)
    assert batches[0]["video"].shape[1:] == (4, 3, 16, 16)


def test_bad_arguments(media, tmp_path):
    with pytest.raises(PyramidflowError, match="single"):
        VideoFolderDataset(media, images="tile")
    with pytest.raises(FileNotFoundError):
        VideoFolderDataset(tmp_path / "nope")
    with pytest.raises(PyramidflowError, match="no video or image files"):
        VideoFolderDataset(tmp_path)
    with pytest.raises(PyramidflowError, match=".jsonl or .csv"):
        (tmp_path / "m.txt").write_text("x")
        ManifestDataset(tmp_path / "m.txt")


def test_cli_data_check(media, tmp_path, capsys):
    rows = [{"video": n, "text": ""} for n in ("count24.mp4", "banner.mp4", "empty.mp4", "cut.mp4")]
    manifest = write_manifest(media / "check.jsonl", rows)
    args = ["data", "check", "--manifest", str(manifest), "--frames", "4", "--size", "16"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == 2 and report["skipped"] == 2 and report["reasons"]["empty"] == 1
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 of 4 entries usable" in out and "empty.mp4: empty" in out
    bad = write_manifest(tmp_path / "bad.jsonl", [{"video": str(media / "empty.mp4")}])
    assert main(["data", "check", "--manifest", str(bad), "--frames", "4", "--size", "16"]) == 1
    assert main(["data", "check", "--manifest", str(tmp_path / "none.jsonl")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_cli_data_preview(media, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["data", "preview", "--dataset", "shapes", "--out", str(out), "--num", "3",
                 "--frames", "4", "--size", "32"]) == 0
    assert Image.open(out).size[0] == 4 + 4 * (96 + 4)
    out2 = tmp_path / "grid2.png"
    assert main(["data", "preview", "--folder", str(media), "--out", str(out2), "--frames", "4",
                 "--size", "16"]) == 0
    assert out2.stat().st_size > 1000 and "4 clips" in capsys.readouterr().out
    rows = [{"video": n, "text": f"row {n}"} for n in ("count24.mp4", "empty.mp4", "still.png")]
    manifest = write_manifest(tmp_path / "p.jsonl", [{"video": str(media / r["video"]), "text": r["text"]}
                                                     for r in rows])
    out3 = tmp_path / "grid3.png"
    assert main(["data", "preview", "--manifest", str(manifest), "--out", str(out3), "--frames", "4",
                 "--size", "16"]) == 0
    assert out3.is_file() and "2 clips" in capsys.readouterr().out  # the empty file is skipped


def test_jpg_and_png_mix_in_as_one_frame_videos_and_portrait_videos_crop(tmp_path):
    portrait = torch.tensor(GREEN).view(1, 3, 1, 1).repeat(6, 1, 64, 40)
    portrait[:, :, :8] = torch.tensor(RED).view(1, 3, 1, 1)  # cropped away: 64x40 -> 32x20 -> rows 6-25
    write_video(tmp_path / "tall.mp4", portrait, fps=6)
    write_video(tmp_path / "photo.jpg", torch.tensor(RED).view(1, 3, 1, 1).repeat(1, 1, 30, 50))
    write_video(tmp_path / "still.png", torch.tensor(GREEN).view(1, 3, 1, 1).repeat(1, 1, 50, 30))
    for name in ("tall.mp4", "photo.jpg", "still.png"):
        (tmp_path / name).with_suffix(".txt").write_text(f"about {name}\n")
    rows = [{"video": n, "text": f"row {n}"} for n in ("photo.jpg", "tall.mp4", "still.png")]
    for ds in (VideoFolderDataset(tmp_path, frames=4, size=20),
               ManifestDataset(write_manifest(tmp_path / "m.jsonl", rows), frames=4, size=20)):
        items = {it["path"].rsplit("/", 1)[1]: it for it in (ds[i] for i in range(len(ds)))}
        assert set(items) == {"tall.mp4", "photo.jpg", "still.png"} and ds.skipped.count == 0
        assert items["tall.mp4"]["video"].shape == (4, 3, 20, 20)
        assert (items["tall.mp4"]["video"] - torch.tensor(GREEN).view(1, 3, 1, 1)).abs().max() < 0.12
        for name, colour in (("photo.jpg", RED), ("still.png", GREEN)):
            v = items[name]["video"]
            assert v.shape == (1, 3, 20, 20) and items[name]["meta"]["kind"] == "image"
            assert (v - torch.tensor(colour).view(1, 3, 1, 1)).abs().max() < 0.05
    assert items["photo.jpg"]["text"] == "row photo.jpg"


@pytest.mark.filterwarnings("ignore:.*no .txt caption")
def test_damaged_files_of_every_kind_never_stop_iteration(tmp_path):
    write_video(tmp_path / "good.mp4", counter_clip(12), fps=8)
    write_video(tmp_path / "g.gif", counter_clip(8), fps=8)
    write_video(tmp_path / "p.png", counter_clip(1))
    names = []
    for src in ("good.mp4", "g.gif", "p.png"):  # truncated at several places
        data = (tmp_path / src).read_bytes()
        for k, frac in enumerate((0.1, 0.2, 0.33, 0.5, 0.7, 0.9)):
            name = f"cut{k}_{src}"
            (tmp_path / name).write_bytes(data[: int(len(data) * frac)])
            names.append(name)
    ds = VideoFolderDataset(tmp_path, frames=4, size=16)
    items = [ds[i] for i in range(len(ds))]
    report = ds.check()
    assert report["ok"] + report["skipped"] == 3 + len(names)
    assert report["ok"] >= 3 and report["skipped"] >= len(names) // 2
    assert all(torch.isfinite(it["video"]).all() for it in items)
