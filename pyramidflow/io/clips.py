"""A folder of generated clips: one video and its prompt per clip, and a contact sheet of them all.

``pyramidflow eval`` reads such a folder back (each ``NAME.mp4`` judged against ``NAME.txt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyramidflow.io.sheet import contact_sheet
from pyramidflow.io.write import write_video


def write_clips(folder: Path, videos, prompts: Sequence[str], fps: float, names: Sequence[str] | None = None,
                sheet: Path | None = None) -> None:
    """``NAME.mp4`` + ``NAME.txt`` per clip (T, 3, H, W) in [0, 1] (names default to ``NN``), and a
    contact sheet of them all (default ``folder/sheet.png``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(names) if names else [f"{i:02d}" for i in range(len(prompts))]
    for name, video, prompt in zip(names, videos, prompts, strict=True):
        write_video(folder / f"{name}.mp4", video, fps=fps)
        (folder / f"{name}.txt").write_text(prompt + "\n")
    contact_sheet(list(videos), list(prompts), sheet or folder / "sheet.png")
