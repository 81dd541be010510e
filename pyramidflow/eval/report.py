"""Scores of a set of generated clips: evaluator accuracies and the descriptor Fréchet distance."""

from __future__ import annotations

from collections.abc import Sequence

from pyramidflow.eval.evaluator import accuracies, evaluate_video
from pyramidflow.eval.frechet import frechet_video_distance


def score_clips(videos: Sequence, prompts: Sequence[str], reference: Sequence | None = None,
                travel_frames: int | None = None) -> dict:
    """``{"accuracy": accuracies(...), "frechet": FD to ``reference`` or None, "results": [...]}``.

    videos: clips (T, 3, H, W) in [0, 1] (or uint8); prompts: one per clip; reference: real clips
    (at least 2) for the Fréchet distance; travel_frames: frames in which a named speed covers its
    share of the free range (None: each clip's ``T - 1``; see :func:`evaluate_video`).
    """
    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} clips but {len(prompts)} prompts")
    results = [evaluate_video(v, p, travel_frames) for v, p in zip(videos, prompts, strict=True)]
    frechet = None
    if reference is not None and len(reference) >= 2 and len(videos) >= 2:
        frechet = frechet_video_distance(videos, reference)
    return {"accuracy": accuracies(results), "frechet": frechet, "results": results}
