"""Writing videos: H.264 mp4 (PyAV), animated GIF and still images (Pillow), chosen by suffix."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from pyramidflow.errors import PyramidflowError

WRITE_SUFFIXES = (".mp4", ".gif", ".png", ".jpg")


def to_uint8_frames(frames) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] or uint8 (torch or numpy) -> (T, H, W, 3) uint8."""
    arr = frames.detach().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if arr.ndim == 3:  # a single image (3, H, W)
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise PyramidflowError(f"frames must be (T, 3, H, W) or (3, H, W), got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float32), nan=0.0) * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))


def _write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int) -> None:
    import av

    T, H, W, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = W, H
        # 4:2:0 needs even sides; odd-sized clips are stored in 4:4:4 at their exact size.
        stream.pix_fmt = "yuv420p" if H % 2 == 0 and W % 2 == 0 else "yuv444p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for i in range(T):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_pil(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    if path.suffix.lower() == ".gif":
        # GIF delays are whole centiseconds: the stored rate is 100 / round(100 / fps).
        delay_ms = 10 * max(2, round(100 / fps))
        images[0].save(path, save_all=True, append_images=images[1:], duration=delay_ms, loop=0)
    else:
        if len(images) != 1:
            raise PyramidflowError(f"{path.name}: a still image holds one frame, got {len(images)}")
        images[0].save(path)


def write_video(path, frames, fps: float = 8.0, crf: int = 17) -> Path:
    """Write frames (T, 3, H, W) float [0, 1] or uint8 to ``.mp4`` (H.264, ``crf`` quality),
    ``.gif`` (looping, adaptive palette) or ``.png``/``.jpg`` (T = 1). Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise PyramidflowError(f"cannot write {path.name}: valid suffixes are {', '.join(WRITE_SUFFIXES)}")
    if not fps > 0:
        raise PyramidflowError(f"fps must be positive, got {fps}")
    arr = to_uint8_frames(frames)
    if arr.shape[0] == 0:
        raise PyramidflowError(f"{path.name}: no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        _write_mp4(path, arr, fps, crf)
    else:
        _write_pil(path, arr, fps)
    return path
