"""Checks shared by the tests of the models shipped under checkpoints/."""

from __future__ import annotations

import json
from pathlib import Path

from pyramidflow.eval import score_clips

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def check_small_safe_folder(folder: Path, class_name: str) -> dict:
    """A saved pipeline of ``class_name``, at most 20 MB, safetensors only; returns model_index.json."""
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == class_name
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert 0 < size <= 20 * 2**20, size
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    return index


def check_draws_prompts(clips, prompts, frames: int = 17, travel_frames: int | None = None) -> dict:
    """The evaluator's scores of ``clips`` (``frames`` x 3 x 32 x 32 each, judged with the model's
    motion scale ``travel_frames``), whose accuracies are well above chance on colour, shape and
    direction; returns :func:`score_clips`'s dict (accuracies and per-clip results)."""
    assert clips[0].shape == (frames, 3, 32, 32) and all(c.isfinite().all() for c in clips)
    scores = score_clips(clips, prompts, travel_frames=travel_frames)
    acc = scores["accuracy"]
    # chance: 1/7 colour, 1/3 shape, 1/4 direction; docs/BENCHMARKS.md has the full scores
    assert acc["color"] >= 0.85 and acc["shape"] >= 0.5 and acc["direction"] >= 0.5, acc
    return scores
