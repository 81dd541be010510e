"""Reading videos and images as frame sequences at a chosen frame rate.

Backends: PyAV (bundled FFmpeg) for video containers (mp4, mkv, webm, avi, mov, ...), Pillow for
GIF (frame delays honoured, so merged duplicate frames come back) and still images (png/jpg/...,
one frame). Everything is resampled to a constant rate: output frame k shows the source frame on
screen at ``start + k / fps`` seconds (sample and hold, as a player would).

Every failure is a :class:`VideoReadError` whose ``reason`` is a short category ("missing",
"empty", "unreadable", "no video stream", "corrupt or truncated", "too short"), so datasets can
skip and count bad files instead of crashing. Damaged files make the decoders raise all kinds of
exceptions (``IndexError``, ``struct.error``, ``ValueError``, ...); any exception raised while
opening or decoding a file is turned into a :class:`VideoReadError` naming the original one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
GIF_SUFFIXES = frozenset({".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv"})
MEDIA_SUFFIXES = IMAGE_SUFFIXES | GIF_SUFFIXES | VIDEO_SUFFIXES


class VideoReadError(Exception):
    """A file that cannot give the frames asked for; ``reason`` is a short category."""

    def __init__(self, path, reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class VideoInfo:
    path: str
    kind: str  # "video", "gif" or "image"
    width: int
    height: int
    fps: float  # frames per second (1.0 for images)
    duration: float  # seconds (1 / fps for images)
    num_frames: int  # frames in the file (estimated from the duration when not stored)

    def frames_at(self, fps: float | None) -> int:
        """How many frames a read at ``fps`` (native when ``None``) yields, by the stored duration."""
        if self.kind == "image":
            return 1
        if fps is None:
            return self.num_frames
        return max(1, int(np.floor(self.duration * fps + 1e-6)))


@contextmanager
def _read_errors(path, reason: str):
    """Turn any exception of a decoder (other than :class:`VideoReadError`) into one."""
    try:
        yield
    except VideoReadError:
        raise
    except Exception as err:  # damaged input: decoders raise many unrelated exception types
        raise VideoReadError(path, reason, f"{type(err).__name__}: {err}") from err


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "gif" if suffix in GIF_SUFFIXES else "video"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoReadError(path, "missing")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "empty", "0 bytes")


def _open_av(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoReadError(path, "unreadable", str(err)) from err
    except Exception as err:  # anything else a damaged header provokes
        raise VideoReadError(path, "unreadable", f"{type(err).__name__}: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "no video stream")
    return container


def _gif_durations(img) -> list[float]:
    """Seconds each GIF frame is shown (browsers' convention: delays under 20 ms mean 100 ms)."""
    out = []
    for i in range(getattr(img, "n_frames", 1)):
        img.seek(i)
        ms = img.info.get("duration", 100) or 100
        out.append((ms if ms >= 20 else 100) / 1000.0)
    return out


def probe(path) -> VideoInfo:
    """Size, rate, duration and frame count of a video, GIF or image, without decoding it all."""
    path = Path(path)
    _check_file(path)
    with _read_errors(path, "unreadable"):
        return _probe(path)


def _probe(path: Path) -> VideoInfo:
    kind = _kind(path)
    if kind != "video":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                w, h = img.size
                if kind == "image":
                    return VideoInfo(str(path), kind, w, h, 1.0, 1.0, 1)
                durations = _gif_durations(img)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise VideoReadError(path, "unreadable", str(err)) from err
        base = min(durations)
        total = float(sum(durations))
        return VideoInfo(str(path), kind, w, h, 1.0 / base, total, int(round(total / base)))
    container = _open_av(path)
    try:
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoReadError(path, "unreadable", "unknown or damaged codec")
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        fps = float(rate)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = (stream.frames or 0) / fps
        frames = stream.frames or int(round(duration * fps))
        w, h = stream.codec_context.width, stream.codec_context.height
    finally:
        container.close()
    if w <= 0 or h <= 0:
        raise VideoReadError(path, "unreadable", "no frame size in the stream header")
    return VideoInfo(str(path), kind, w, h, fps, duration, frames)


def _iter_av(path: Path, start: float, size) -> Iterator[tuple[float, np.ndarray]]:
    container = _open_av(path)
    try:
        with _read_errors(path, "corrupt or truncated"):
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base
            origin = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
            if start > 0 and tb:
                container.seek(int((origin + start) / tb), stream=stream, backward=True)
            rate = float(stream.average_rate or 25)
            kwargs = {"format": "rgb24"}
            if size is not None:
                kwargs.update(width=size[0], height=size[1], interpolation="AREA")
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time - origin if frame.time is not None else i / rate
                yield t, lambda frame=frame: frame.to_ndarray(**kwargs)
    finally:
        container.close()


def _iter_pil(path: Path, kind: str, size) -> Iterator[tuple[float, np.ndarray]]:
    from PIL import Image

    with _read_errors(path, "corrupt or truncated"), Image.open(path) as img:
        durations = _gif_durations(img) if kind == "gif" else [1.0]
        t = 0.0
        for i, d in enumerate(durations):
            img.seek(i)
            frame = img.convert("RGB")
            if size is not None:
                frame = frame.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            arr = np.array(frame)  # a writable copy
            yield t, lambda arr=arr: arr
            t += d


def _iter_lazy(path, start: float, size):
    """(time in seconds, function returning the frame) in display order: frames that resampling
    drops are decoded but never converted to RGB."""
    path = Path(path)
    _check_file(path)
    kind = _kind(path)
    return _iter_av(path, start, size) if kind == "video" else _iter_pil(path, kind, size)


def iter_frames(path, start: float = 0.0, size: tuple[int, int] | None = None):
    """(time in seconds, frame (H, W, 3) uint8) in display order; ``size`` = (width, height) rescale."""
    with _read_errors(path, "corrupt or truncated"):
        for t, get in _iter_lazy(path, start, size):
            yield t, get()


def read_frames(
    path,
    fps: float | None = None,
    start: float = 0.0,
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    info: VideoInfo | None = None,
) -> tuple[np.ndarray, float]:
    """Frames (T, H, W, 3) uint8 resampled to ``fps`` (native rate when ``None``) and that rate.

    Output frame k is the source frame on screen at ``start + k / fps`` (the latest one that began
    at or before it; the last frame lasts one source period); with ``num_frames``
    exactly that many are returned or :class:`VideoReadError` ("too short") is raised.
    """
    info = info or probe(path)
    rate = float(fps or info.fps)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if info.kind == "image":
        frame = next(iter(iter_frames(path, size=size)))[1]
        return frame[None], rate
    out: list[np.ndarray] = []
    tol = 0.01 / info.fps  # timestamps are rounded to the container's time base

    def fill(until: float, get) -> None:  # targets before ``until`` show frame ``get()``
        frame = None
        while (num_frames is None or len(out) < num_frames) and start + len(out) / rate < until - tol:
            frame = get() if frame is None else frame
            out.append(frame)

    prev_t, prev = None, None
    with _read_errors(path, "corrupt or truncated"):  # ``fill`` converts frames lazily
        for t, img in _iter_lazy(path, start, size):
            if prev is not None:
                fill(t, prev)
            if num_frames is not None and len(out) >= num_frames:
                break
            prev_t, prev = t, img
        if prev is not None:
            fill(prev_t + 1.0 / info.fps, prev)  # the last frame is shown for one source period
    if not out or (num_frames is not None and len(out) < num_frames):
        need = f", need {num_frames}" if num_frames else ""
        raise VideoReadError(path, "too short", f"{len(out)} frames at {rate:g} fps from {start:g} s{need}")
    return np.stack(out), rate


def read_video(path, fps: float | None = None):
    """A whole video (or GIF, or image as one frame) -> (frames (T, 3, H, W) float32 in [0, 1], fps)."""
    import torch

    frames, rate = read_frames(path, fps=fps)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255), rate
