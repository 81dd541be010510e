"""Fill a latent cache (:mod:`pyramidflow.data.latent_cache`) by encoding a dataset with a VAE.

Each clip is encoded once with the posterior mean (deterministic) and stored already normalised
(z - mean_c) / std_c, together with its caption and, when a text encoder is given, its text
embedding. With ``pyramid_levels`` L > 0 the definition-2 clean targets of the pyramid are stored
too (docs/maths.md section 6): for each level l = 1..L the video is lowered l times *in pixel space*
by the pyramid's transform (block means; with a causal first frame 81 -> 41 -> 21 frames, halving H
and W) and encoded, so training never re-encodes. Work is split by shard, so several processes
(``worker_id`` of ``num_workers``) can fill one cache, and a re-run skips complete shards.

Maths: docs/maths.md section 17.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pyramidflow.data.latent_cache import (
    shard_complete,
    shard_ranges,
    shards_for_worker,
    write_index,
    write_shard,
)
from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae import VideoAutoencoder
from pyramidflow.training.vae.data import as_clip, to_model_range

# captions -> (embeddings (B, L, D), mask (B, L))
TextEncodeFn = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


def vae_header(vae: VideoAutoencoder, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a cache records about the VAE: class, compression and the normalisation applied."""
    mean, std = vae.latent_stats()
    return {
        "vae_class": type(vae).__name__,
        "latent_channels": vae.latent_channels,
        "temporal_compression": vae.temporal_compression,
        "spatial_compression": vae.spatial_compression,
        "normalized": True,
        "latents_mean": mean.tolist(),
        "latents_std": std.tolist(),
        **(extra or {}),
    }


def _item_meta(item: Any, index: int) -> tuple[str, str | None]:
    if isinstance(item, dict):
        caption = item.get("caption", item.get("text", ""))
        source = item.get("path", item.get("video_path"))
        return str(caption or ""), None if source is None else str(source)
    return "", None


@torch.no_grad()
def build_latent_cache(
    dataset,
    vae: VideoAutoencoder,
    out_dir: str | Path,
    shard_size: int = 64,
    worker_id: int = 0,
    num_workers: int = 1,
    text_encoder: TextEncodeFn | None = None,
    batch_size: int = 1,
    chunk_latents: int | None = None,
    header_extra: dict[str, Any] | None = None,
    show_progress: bool = True,
    pyramid_levels: int = 0,
    pyramid_transform=None,
) -> dict[str, Any]:
    """Encode this worker's shards of ``dataset``; returns ``{"written", "skipped", "unreadable",
    "index"}``: shards written, shards already complete, clips that could not be read (left out of
    the cache, never replaced by another clip) and the merged index. ``pyramid_levels`` /
    ``pyramid_transform`` (a :class:`~pyramidflow.pyramid.HaarTransform`): the definition-2 targets
    (module docstring), stored as ``pyramid.{l}.{key}``."""
    out_dir = Path(out_dir)
    if pyramid_levels and pyramid_transform is None:
        raise PyramidflowError("pyramid_levels needs the pyramid's transform (pyramid_transform)")
    if pyramid_levels:
        header_extra = {**(header_extra or {}), "pyramid_levels": int(pyramid_levels),
                        "pyramid_transform": repr(pyramid_transform)}
    ranges = shard_ranges(len(dataset), shard_size)
    header = vae_header(vae, {"text_embeddings": text_encoder is not None, **(header_extra or {})})
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    written, skipped, unreadable = [], [], []
    mine = shards_for_worker(len(ranges), worker_id, num_workers)
    for shard in tqdm(mine, disable=not show_progress, desc=f"cache worker {worker_id}"):
        if shard_complete(out_dir, shard, len(ranges)):
            skipped.append(shard)
            continue
        tensors: dict[str, torch.Tensor] = {}
        items: list[dict[str, Any]] = []
        indices = list(ranges[shard])
        for start in range(0, len(indices), batch_size):
            fetched = [(i, _exact_item(dataset, i)) for i in indices[start : start + batch_size]]
            unreadable += [_unreadable(dataset, i) for i, r in fetched if r is None]
            batch_idx = [i for i, r in fetched if r is not None]
            raw = [r for _, r in fetched if r is not None]
            if not raw:
                continue
            clips = [as_clip(r) for r in raw]  # (T, 3, H, W) each
            x = to_model_range(clips).to(device, dtype)
            z = vae.encode(x, chunk_latents=chunk_latents).float().cpu()  # (B, C, T, h, w)
            lowered, pixels = [], x.float()
            for _ in range(pyramid_levels):  # (B, C, T_l, h_l, w_l) per level, each one level below the last
                pixels = pyramid_transform.down(pixels)
                lowered.append(vae.encode(pixels.to(dtype), chunk_latents=chunk_latents).float().cpu())
            metas = [_item_meta(r, i) for r, i in zip(raw, batch_idx, strict=True)]
            text = text_encoder([m[0] for m in metas]) if text_encoder is not None else None
            for j, i in enumerate(batch_idx):
                tensors[f"latents.{i}"] = z[j]
                for level, zl in enumerate(lowered, start=1):
                    tensors[f"pyramid.{level}.{i}"] = zl[j]
                item = {"key": i, "caption": metas[j][0], "source": metas[j][1], "frames": clips[j].shape[0]}
                item.update(latent_shape=list(z[j].shape), height=clips[j].shape[2], width=clips[j].shape[3])
                item["text_shape"] = None
                if text is not None:
                    tensors[f"text.{i}"] = text[0][j].float().cpu()
                    tensors[f"text_mask.{i}"] = text[1][j].cpu()
                    item["text_shape"] = list(text[0][j].shape)
                items.append(item)
        write_shard(out_dir, shard, len(ranges), tensors, items, header)
        written.append(shard)
    return {"written": written, "skipped": skipped, "unreadable": unreadable,
            "index": write_index(out_dir, len(ranges))}


def _exact_item(dataset, index: int):
    """Item ``index`` itself, or None when it cannot be read: a video dataset's ``clip`` (``ds[i]``
    would put the next readable clip in its place, a duplicate in the cache)."""
    exact = getattr(dataset, "clip", None)
    return exact(index) if callable(exact) else dataset[index]


def _unreadable(dataset, index: int) -> dict[str, Any]:
    """``{"index", "path", "reason"}`` of a clip that could not be read."""
    path = dataset.path_of(index)
    return {"index": index, "path": path, "reason": dataset.skipped.files.get(path, ("unreadable", ""))[0]}
