"""Clip batches for VAE training: deterministic, resumable order over a map-style dataset.

Datasets yield clips (T, 3, H, W) in [0, 1] (or dicts holding one under ``"video"``); batches are
(B, 3, T, H, W) in [-1, 1]. The order is a fresh permutation per epoch drawn from ``seed + epoch``,
so a position ``{"epoch", "offset"}`` stored in a checkpoint resumes exactly where training stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from pyramidflow.errors import PyramidflowError


def as_clip(item: Any) -> torch.Tensor:
    """A dataset item -> float clip (T, 3, H, W) in [0, 1]."""
    clip = item.get("video") if isinstance(item, dict) else item
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[1] != 3:
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise PyramidflowError(f"dataset items must be clips (T, 3, H, W) in [0, 1], got {shape}")
    return clip.float()


def to_model_range(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """Clips (T, 3, H, W) in [0, 1] -> batch (B, 3, T, H, W) in [-1, 1]."""
    return torch.stack([c.permute(1, 0, 2, 3) for c in clips]) * 2 - 1


def clip_batches(
    dataset, batch_size: int, seed: int, position: dict[str, int] | None = None
) -> Iterator[tuple[torch.Tensor, dict[str, int]]]:
    """Endless (batch, position after it); ``position`` resumes a previous run's order."""
    n = len(dataset)
    if n < batch_size:
        raise PyramidflowError(f"the training set has {n} clips, fewer than batch_size={batch_size}")
    epoch, offset = (position or {}).get("epoch", 0), (position or {}).get("offset", 0)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        while offset + batch_size <= n:
            idx = order[offset : offset + batch_size]
            offset += batch_size
            yield to_model_range([as_clip(dataset[i]) for i in idx]), {"epoch": epoch, "offset": offset}
        epoch, offset = epoch + 1, 0
