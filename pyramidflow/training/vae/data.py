"""Datasets of VAE training: clips from the shapes source, video folders or manifests, held-out
validation clips, an in-memory cache of decoded clips.

Datasets yield clips (T, 3, H, W) in [0, 1] (or dicts holding one under ``"video"``); model batches
are (B, 3, T, H, W) in [-1, 1] (:func:`to_model_range`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pyramidflow.data.sources import clip_dataset
from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae.pixel import frames_to_model


def as_clip(item: Any) -> torch.Tensor:
    """A dataset item -> float clip (T, 3, H, W) in [0, 1]."""
    clip = item.get("video") if isinstance(item, dict) else item
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[1] != 3:
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise PyramidflowError(f"dataset items must be clips (T, 3, H, W) in [0, 1], got {shape}")
    return clip.float()


def to_model_range(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """Clips (T, 3, H, W) in [0, 1] -> batch (B, 3, T, H, W) in [-1, 1]."""
    return frames_to_model(torch.stack(list(clips)))


# ---- dataset sources -------------------------------------------------------------------------
# Thin adapters over pyramidflow.data.sources.clip_dataset (shapes, video folders, manifests).


def shapes_dataset(num: int, frames: int, height: int, width: int, seed: int):
    """The built-in procedural shapes clips (``pyramidflow.data.shapes``)."""
    return clip_dataset("shapes", frames=frames, height=height, width=width, seed=seed, length=num)


def folder_clips(folder: str, frames: int | None, height: int | None, width: int | None, **video):
    """Clips read from a folder of video files (``pyramidflow.data.video``); ``video``: fps, stride."""
    return clip_dataset("folder", folder, frames=frames, height=height, width=width, **video)


def manifest_clips(manifest: str, frames: int | None, height: int | None, width: int | None, **video):
    """Clips and captions listed in a manifest (``pyramidflow.data.manifest``); ``video``: fps, stride."""
    return clip_dataset("manifest", manifest, frames=frames, height=height, width=width, **video)


def text_encode_fn(path: str, device):
    """``captions -> (embeddings, mask)`` from a text encoder folder (``pyramidflow.models``)."""
    from pyramidflow.models import load_text_encoder

    return load_text_encoder(path).to(device).encode


class _Split(torch.utils.data.Dataset):
    def __init__(self, base, indices: list[int]) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


class InMemoryClips(torch.utils.data.Dataset):
    """Decode each clip once and keep it as uint8 (exact for 8-bit video: k/255 round-trips)."""

    def __init__(self, base) -> None:
        self.base, self.store = base, {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self.store:
            self.store[i] = as_clip(self.base[i]).mul(255).round_().to(torch.uint8)
        return self.store[i].float().div_(255)


class TintedClips(torch.utils.data.Dataset):
    """A share of the clips blended with a random colour: ``a x + (1 - a) c``, c ~ U(0, 1)^3, and the
    colour's weight ``1 - a`` ~ U(``weight``) (default 0.1 to 0.6; up to 1: flat colour fields).

    For data whose colour lives only in small objects on white, black or grey backgrounds (the
    built-in shapes): a small Wan VAE learns brightness first and keeps objects grey for thousands of
    steps (docs/BENCHMARKS.md, "The toy Wan teacher's VAE"); tinted clips carry colour on every pixel.
    Draws depend only on ``seed`` and the index, so a resumed run sees the same clips.
    """

    def __init__(self, base, share: float, seed: int = 0, weight: tuple[float, float] = (0.1, 0.6)) -> None:
        if not 0.0 <= share <= 1.0:
            raise PyramidflowError(f"data.tint must be in [0, 1], got {share}")
        low, high = (float(w) for w in weight)
        if not 0.0 <= low <= high <= 1.0:
            raise PyramidflowError(f"data.tint_weight must be 0 <= low <= high <= 1, got {weight}")
        self.base, self.share, self.seed, self.weight = base, float(share), int(seed), (low, high)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> torch.Tensor:
        clip = as_clip(self.base[i])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        if torch.rand((), generator=g).item() >= self.share:
            return clip
        low, high = self.weight
        a = 1 - (low + (high - low) * torch.rand((), generator=g))
        colour = torch.rand(3, generator=g).view(1, 3, 1, 1)
        return a * clip + (1 - a) * colour


def build_vae_datasets(cfg) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """(train, validation) datasets for a :class:`VAEDataConfig`; validation clips are held out:
    a separate ``val_path`` when given, else ``num_val`` clips drawn out of the training source
    (for strided video clips these can overlap training clips of the same file). ``tint`` applies to
    the training clips only (:class:`TintedClips`)."""
    train, val = _build_vae_datasets(cfg)
    if cfg.tint:
        train = TintedClips(train, cfg.tint, cfg.seed, tuple(cfg.tint_weight))
    return train, val


def _build_vae_datasets(cfg) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    if cfg.source == "shapes":
        video_only = {"fps": cfg.fps, "stride": cfg.stride, "val_path": cfg.val_path,
                      "cache_in_memory": cfg.cache_in_memory or None}
        given = [f"data.{key}" for key, value in video_only.items() if value is not None]
        if given:
            names = ", ".join(given)
            raise PyramidflowError(f"{names}: only for video sources (folder, manifest), not shapes")
        train = shapes_dataset(cfg.num_train, cfg.frames, cfg.height, cfg.width, cfg.seed)
        val = shapes_dataset(cfg.num_val, cfg.frames, cfg.height, cfg.width, cfg.seed + 10**6)
        return train, val
    if not cfg.path:
        raise PyramidflowError(f"data.source={cfg.source!r} needs data.path")
    load = folder_clips if cfg.source == "folder" else manifest_clips
    keep = InMemoryClips if cfg.cache_in_memory else (lambda dataset: dataset)
    full = keep(load(cfg.path, cfg.frames, cfg.height, cfg.width, fps=cfg.fps, stride=cfg.stride))
    if cfg.val_path:
        val = load(cfg.val_path, cfg.frames, cfg.height, cfg.width, fps=cfg.fps, stride=cfg.stride)
        if len(val) == 0:
            where = f"data.val_path {cfg.val_path}"
            raise PyramidflowError(f"no validation clips of {cfg.frames} frames in {where}")
        picks = torch.linspace(0, len(val) - 1, min(cfg.num_val, len(val))).round().long().tolist()
        return full, keep(_Split(val, sorted(set(picks))))
    n_val = min(cfg.num_val, len(full) // 5)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    return _Split(full, order[n_val:]), _Split(full, order[:n_val])
