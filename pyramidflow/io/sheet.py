"""Contact sheets: one PNG with a row of frames per clip and its caption above the row."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pyramidflow.errors import PyramidflowError
from pyramidflow.io.write import to_uint8_frames


def _pick(num: int, max_frames: int) -> np.ndarray:
    """Indices of at most ``max_frames`` frames spread evenly over ``num`` (first and last kept)."""
    if num <= max_frames:
        return np.arange(num)
    return np.unique(np.round(np.linspace(0, num - 1, max_frames)).astype(int))


def contact_sheet(
    videos: Sequence,
    captions: Sequence[str] | None,
    path,
    max_frames: int = 8,
    min_cell: int = 96,
    pad: int = 4,
) -> Path:
    """Draw each clip (T, 3, H, W) (float [0, 1] or uint8) as a row of up to ``max_frames`` evenly
    spaced frames, upscaled (nearest) so a cell is at least ``min_cell`` pixels high, under its
    caption; save as PNG at ``path`` and return it."""
    from PIL import Image, ImageDraw, ImageFont

    if len(videos) == 0:
        raise PyramidflowError("contact_sheet needs at least one clip")
    captions = list(captions) if captions is not None else [""] * len(videos)
    if len(captions) != len(videos):
        raise PyramidflowError(f"{len(videos)} clips but {len(captions)} captions")
    clips = [to_uint8_frames(v) for v in videos]
    H = max(c.shape[1] for c in clips)
    scale = max(1, int(np.ceil(min_cell / H)))
    cell_h = H * scale
    cell_w = max(c.shape[2] for c in clips) * scale
    cols = max(len(_pick(len(c), max_frames)) for c in clips)
    font = ImageFont.load_default()
    chars = max(20, (cols * (cell_w + pad)) // 7)
    wrapped = [textwrap.wrap(c, chars) or [""] for c in captions]
    line_h = 13
    rows_h = [len(w) * line_h + pad + cell_h + pad for w in wrapped]
    sheet = Image.new("RGB", (pad + cols * (cell_w + pad), pad + sum(rows_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for clip, lines, row_h in zip(clips, wrapped, rows_h, strict=True):
        for j, line in enumerate(lines):
            draw.text((pad, y + j * line_h), line, fill=(0, 0, 0), font=font)
        top = y + len(lines) * line_h + pad
        for k, t in enumerate(_pick(len(clip), max_frames)):
            frame = Image.fromarray(clip[t])
            frame = frame.resize((frame.width * scale, frame.height * scale), Image.Resampling.NEAREST)
            sheet.paste(frame, (pad + k * (cell_w + pad), top))
        y += row_h
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
