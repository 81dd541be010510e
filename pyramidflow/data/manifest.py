"""Manifest datasets: a JSONL or CSV file of ``{video, text}`` rows.

JSONL: one object per line, e.g. ``{"video": "clips/a.mp4", "text": "a dog running"}``; CSV: a
header row with ``video`` and ``text`` columns. ``path``/``file`` are accepted for ``video`` and
``caption``/``prompt`` for ``text``.

Paths: a relative path is relative to the manifest's folder and must stay inside it (``../`` that
leads out of it is refused: the row is skipped with a warning saying so); an absolute path is used
as written, the explicit way to list files elsewhere. A malformed row, or one naming a missing file,
is skipped with a warning and counted like a bad video (see :mod:`pyramidflow.data.video`). A
caption that is not a string (a number, a list, null) is an error naming the row: silently training
on ``""`` or on ``"[1, 2]"`` would be worse.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from pyramidflow.data.video import Entry, SkipLog, VideoClipDataset
from pyramidflow.errors import PyramidflowError

VIDEO_KEYS = ("video", "path", "file")
TEXT_KEYS = ("text", "caption", "prompt")


def _field(row: dict, keys: tuple[str, ...]):
    return next((row[k] for k in keys if isinstance(row.get(k), str)), None)


def _caption(row: dict, where: str) -> str:
    key = next((k for k in TEXT_KEYS if k in row), None)
    if key is None:
        return ""
    if not isinstance(row[key], str):
        raise PyramidflowError(f"{where}: the caption ({key!r}) must be a string, got "
                               f"{type(row[key]).__name__} {json.dumps(row[key])[:60]}")
    return row[key].strip()


def _inside(folder: Path, relative: str) -> bool:
    """Does ``folder / relative`` stay inside ``folder`` (after ``..``; symlinks are not followed)?"""
    root = os.path.normpath(os.path.abspath(folder))
    return os.path.normpath(os.path.join(root, relative)).startswith(root + os.sep)


def read_manifest(manifest, skips: SkipLog) -> list[Entry]:
    """Entries of a ``.jsonl``/``.json`` or ``.csv`` manifest; bad rows go to ``skips``."""
    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise PyramidflowError(f"manifest {path.name}: use a .jsonl or .csv file")
    rows: list[tuple[int, dict | None]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        if suffix == ".csv":
            rows = [(i + 2, row) for i, row in enumerate(csv.DictReader(fh))]
        else:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    obj = None
                rows.append((i, obj if isinstance(obj, dict) else None))
    entries = []
    for line_no, row in rows:
        video = _field(row, VIDEO_KEYS) if row is not None else None
        if not video:
            skips.add(f"{path}:{line_no}", "malformed row", f"needs a '{VIDEO_KEYS[0]}' path")
            continue
        text = _caption(row, f"{path}:{line_no}")
        if not Path(video).is_absolute() and not _inside(path.parent, video):
            skips.add(f"{path}:{line_no}", "outside the manifest's folder",
                      f"{video!r}: relative paths must stay inside {path.parent}; write an absolute path "
                      "to use a file elsewhere")
            continue
        file = Path(video) if Path(video).is_absolute() else path.parent / video
        if not file.is_file():
            skips.add(str(file), "missing", f"listed on line {line_no} of {path.name}")
            continue
        entries.append(Entry(str(file), text))
    return entries


def write_manifest(path, rows: list[dict[str, str]]) -> Path:
    """Write ``[{"video": ..., "text": ...}, ...]`` as JSONL (or CSV by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(fh, fieldnames=["video", "text"])
            writer.writeheader()
            writer.writerows({"video": r["video"], "text": r.get("text", "")} for r in rows)
        else:
            fh.writelines(json.dumps({"video": r["video"], "text": r.get("text", "")}) + "\n" for r in rows)
    return path


class ManifestDataset(VideoClipDataset):
    """Clips of the files a manifest lists, with their captions (see :class:`VideoClipDataset`)."""

    def __init__(self, manifest, frames: int | None = 16, size: int | None = None, **kwargs) -> None:
        skips = kwargs.pop("skips", None) or SkipLog()
        entries = read_manifest(manifest, skips)  # may be empty: check() still reports the skips
        super().__init__(entries, frames, size, skips=skips, **kwargs)
