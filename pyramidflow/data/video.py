"""Datasets of real videos: a folder of files with same-named ``.txt`` captions, and (in
:mod:`pyramidflow.data.manifest`) a JSONL/CSV manifest.

Every file is decoded with :mod:`pyramidflow.io` (PyAV / Pillow), resampled to ``fps``, resized so
the shorter side covers the target and centre-cropped to ``height x width``, and cut into clips of
``frames`` frames whose starts are ``stride`` output frames apart (one clip from the start of each
file when ``stride`` is None). Images are one-frame videos (``images="single"``), tiled to a still
clip (``"repeat"``) or left out (``"skip"``).

Bad input never stops a run and never becomes silent garbage: a missing, empty, unreadable,
truncated or too-short file is skipped with one :class:`SkippedInputWarning` naming it and the
reason, counted in ``dataset.skipped`` (per process: DataLoader workers count their own), and the
item is replaced by the next usable one. ``dataset.check()`` decodes every file and reports.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.io.read import IMAGE_SUFFIXES, MEDIA_SUFFIXES, VideoInfo, VideoReadError, probe, read_frames

IMAGE_MODES = ("single", "repeat", "skip")


class SkippedInputWarning(UserWarning):
    """A data file was skipped; the message names it and the reason."""


@dataclass
class SkipLog:
    """Files skipped so far: one warning per file, counts per reason."""

    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (reason, detail)

    def add(self, path, reason: str, detail: str = "") -> None:
        path = str(path)
        if path in self.files:
            return
        self.files[path] = (reason, detail)
        msg = f"skipping {path}: {reason}" + (f" ({detail})" if detail else "")
        warnings.warn(msg, SkippedInputWarning, stacklevel=3)

    @property
    def count(self) -> int:
        return len(self.files)

    def reasons(self) -> dict[str, int]:
        return dict(Counter(reason for reason, _ in self.files.values()))

    def as_list(self) -> list[dict[str, str]]:
        return [{"path": p, "reason": r, "detail": d} for p, (r, d) in self.files.items()]


@dataclass(frozen=True)
class Entry:
    path: str
    text: str


def cover_size(width: int, height: int, out_h: int | None, out_w: int | None) -> tuple[int, int] | None:
    """(width, height) to decode at so the frame covers ``out_h x out_w`` keeping its aspect ratio."""
    if out_h is None and out_w is None:
        return None
    out_h, out_w = out_h or out_w, out_w or out_h
    scale = max(out_h / height, out_w / width)
    return max(out_w, round(width * scale)), max(out_h, round(height * scale))


def center_crop(frames: np.ndarray, out_h: int | None, out_w: int | None) -> np.ndarray:
    """Crop (T, H, W, 3) to the central ``out_h x out_w``."""
    if out_h is None and out_w is None:
        return frames
    out_h, out_w = out_h or out_w, out_w or out_h
    top = (frames.shape[1] - out_h) // 2
    left = (frames.shape[2] - out_w) // 2
    return frames[:, top : top + out_h, left : left + out_w]


class VideoClipDataset(torch.utils.data.Dataset):
    """Clips from a list of :class:`Entry` (path, caption); subclasses build the list.

    ``ds[i]`` is ``{"video": (T, 3, H, W) float32 in [0, 1], "text", "path", "meta": {"fps",
    "start", "source_fps", "source_width", "source_height", "kind"}}``.
    """

    def __init__(
        self,
        entries: list[Entry],
        frames: int | None = 16,
        size: int | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        fps: float | None = None,
        stride: int | None = None,
        images: str = "single",
        skips: SkipLog | None = None,
    ) -> None:
        if frames is not None and frames < 1:
            raise PyramidflowError(f"frames must be >= 1 (or None for whole videos), got {frames}")
        if images not in IMAGE_MODES:
            raise PyramidflowError(f"images={images!r}; valid: {', '.join(IMAGE_MODES)}")
        if stride is not None and (stride < 1 or frames is None):
            raise PyramidflowError(f"stride must be >= 1 and needs frames, got stride={stride}")
        if fps is not None and not fps > 0:
            raise PyramidflowError(f"fps must be positive, got {fps}")
        self.frames, self.fps, self.stride, self.images = frames, fps, stride, images
        self.height, self.width = height or size, width or size
        self.skipped = skips or SkipLog()
        if images == "skip":
            entries = [e for e in entries if Path(e.path).suffix.lower() not in IMAGE_SUFFIXES]
        self.entries = entries
        # clips: (entry index, start in output frames); with a stride every file is probed now.
        self.clips: list[tuple[int, int]] = []
        for k, entry in enumerate(entries):
            if stride is None or self._is_image(entry):
                self.clips.append((k, 0))
                continue
            try:
                info = probe(entry.path)
            except VideoReadError as err:
                self.skipped.add(entry.path, err.reason, err.detail)
                continue
            available = info.frames_at(fps)
            starts = range(0, available - frames + 1, stride)
            if not starts:
                self.skipped.add(entry.path, "too short", f"{available} frames, need {frames}")
            self.clips.extend((k, s) for s in starts)

    def __len__(self) -> int:
        return len(self.clips)

    @staticmethod
    def _is_image(entry: Entry) -> bool:
        return Path(entry.path).suffix.lower() in IMAGE_SUFFIXES

    def load(self, entry: Entry, start: int = 0) -> dict:
        """Decode one clip of ``entry`` starting at output frame ``start``; raises VideoReadError."""
        info: VideoInfo = probe(entry.path)
        rate = self.fps or info.fps
        need = self.frames if info.kind != "image" else None
        decode_size = cover_size(info.width, info.height, self.height, self.width)
        arr, rate = read_frames(entry.path, rate, start / rate, need, decode_size, info)
        arr = center_crop(arr, self.height, self.width)  # (T, H, W, 3) uint8
        if info.kind == "image" and self.images == "repeat" and self.frames:
            arr = np.repeat(arr, self.frames, axis=0)
        video = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255)
        meta = {"fps": float(rate), "start": float(start / rate), "source_fps": float(info.fps),
                "source_width": info.width, "source_height": info.height, "kind": info.kind}
        return {"video": video, "text": entry.text, "path": entry.path, "meta": meta}

    def path_of(self, index: int) -> str:
        """The file clip ``index`` comes from."""
        return self.entries[self.clips[index][0]].path

    def clip(self, index: int) -> dict | None:
        """Clip ``index`` itself, or None when its file is unreadable (then it is in ``skipped``).
        Unlike ``ds[index]`` there is no substitute: for tools that must not duplicate clips."""
        k, start = self.clips[index]
        entry = self.entries[k]
        if entry.path in self.skipped.files:
            return None
        try:
            return self.load(entry, start)
        except VideoReadError as err:
            self.skipped.add(entry.path, err.reason, err.detail)
            return None

    def __getitem__(self, index: int) -> dict:
        n = len(self.clips)
        if n == 0:
            raise PyramidflowError(f"no usable clips ({self.skipped.count} files skipped)")
        for step in range(n):  # the clip asked for, else the next usable one
            item = self.clip((index + step) % n)
            if item is not None:
                return item
        raise PyramidflowError(f"no usable clips: all {self.skipped.count} files were skipped")

    def check(self) -> dict:
        """Decode the first clip of every file: ``{"ok", "skipped", "reasons", "files"}``."""
        ok = 0
        for entry in self.entries:
            if entry.path in self.skipped.files:
                continue
            try:
                self.load(entry, 0)
                ok += 1
            except VideoReadError as err:
                self.skipped.add(entry.path, err.reason, err.detail)
        return {"ok": ok, "skipped": self.skipped.count, "reasons": self.skipped.reasons(),
                "files": self.skipped.as_list()}


def folder_entries(folder) -> list[Entry]:
    """Media files under ``folder`` (recursive, sorted) with the text of same-named ``.txt`` files.

    A file without a caption gets ``""``; one warning says how many lack one.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {folder}")
    entries, uncaptioned = [], 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in MEDIA_SUFFIXES:
            continue
        caption = path.with_suffix(".txt")
        if caption.is_file():
            text = caption.read_text(encoding="utf-8", errors="replace").strip()
        else:
            text, uncaptioned = "", uncaptioned + 1
        entries.append(Entry(str(path), text))
    if uncaptioned:
        warnings.warn(f"{uncaptioned} files in {folder} have no .txt caption; their text is empty",
                      UserWarning, stacklevel=3)
    return entries


class VideoFolderDataset(VideoClipDataset):
    """Every video/GIF/image under ``folder`` with the caption in its same-named ``.txt`` file."""

    def __init__(self, folder, frames: int | None = 16, size: int | None = None, **kwargs) -> None:
        entries = folder_entries(folder)
        if not entries:
            kinds = ", ".join(sorted(MEDIA_SUFFIXES))
            raise PyramidflowError(f"no video or image files in {folder} (looked for {kinds})")
        super().__init__(entries, frames, size, **kwargs)
