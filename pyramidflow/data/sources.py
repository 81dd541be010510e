"""Pick a clip dataset from a config: the built-in shapes, a folder of videos, or a manifest.

Every source yields ``{"video": (T, 3, H, W) float in [0, 1], "text": str, ...}``. Images mix in
as one-frame clips: real folders and manifests hold them naturally (``images="single"``); for the
procedural shapes :func:`with_images` adds rendered stills.
"""

from __future__ import annotations

import torch

from pyramidflow.errors import PyramidflowError

SOURCES = ("shapes", "folder", "manifest", "latents")


CLEAN_TARGETS = ("auto", "latent", "pixel")


class LatentClips(torch.utils.data.Dataset):
    """A latent cache (``pyramidflow cache-latents``) as clips: ``{"video": (C, T, h, w) normalised
    latents, "text": caption}``, plus ``clean_pyramid`` (the definition-2 clean targets, coarse to fine,
    docs/maths.md section 6) when they are used. Training on it skips the VAE encoder
    (``to_model_space`` is the identity); the cache's header says which VAE made it.

    ``clean_targets``: ``latent`` (definition 1: the stages' clean signals are the latents lowered by
    the pyramid's transform, the stored targets are ignored), ``pixel`` (definition 2: the video
    lowered in pixel space, then encoded; the cache must hold them, ``--pyramid-levels``) or
    ``auto`` (definition 2 where the cache holds enough levels, else 1). ``stages``: the pyramid's
    stage count; its finest ``stages`` clean signals are used (None: all the cache holds).
    """

    def __init__(self, root, clean_targets: str = "auto", stages: int | None = None) -> None:
        from pyramidflow.data.latent_cache import LatentCacheDataset

        if clean_targets not in CLEAN_TARGETS:
            raise PyramidflowError(f"clean_targets must be one of {', '.join(CLEAN_TARGETS)}, "
                                   f"got {clean_targets!r}")
        self.cache = LatentCacheDataset(root)
        self.header = self.cache.header
        levels = int(self.header.get("pyramid_levels", 0))
        needed = levels if stages is None else stages - 1
        if clean_targets == "pixel" and (needed < 1 or levels < needed):
            raise PyramidflowError(f"clean_targets: pixel (definition 2) needs a cache with {max(needed, 1)} "
                                   f"lowered level(s) of the video encoded; {root} has {levels} "
                                   f"(cache-latents --pyramid-levels {max(needed, 1)}) and the model "
                                   f"{stages} stage(s)")
        use = clean_targets == "pixel" or (clean_targets == "auto" and 1 <= needed <= levels)
        self.stages = needed + 1 if use else 0  # clean signals per item (0: definition 1)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict:
        item = self.cache[i]
        out = {"video": item["latents"].float(), "text": item["caption"]}
        if self.stages:
            out["clean_pyramid"] = [z.float() for z in item["clean_pyramid"][-self.stages:]]
        return out


def clip_dataset(
    source: str,
    path: str | None = None,
    *,
    frames: int | None,
    height: int | None,
    width: int | None,
    seed: int = 0,
    length: int = 10_000,
    split: str = "train",
    fps: float | None = None,
    stride: int | None = None,
    clean_targets: str = "auto",
    stages: int | None = None,
    **shapes_kwargs,
) -> torch.utils.data.Dataset:
    """A clip dataset of ``frames`` x ``height`` x ``width`` from ``source`` (see :data:`SOURCES`;
    ``latents`` reads a latent cache folder, whose clips keep the size they were encoded at, with
    ``clean_targets`` and ``stages`` as in :class:`LatentClips`). For
    video files ``None`` keeps whole videos (frames) or the source size."""
    if source == "shapes":
        if frames is None or height is None or width is None:
            raise PyramidflowError("the shapes source needs frames, height and width")
        from pyramidflow.data.shapes import ShapesDataset

        return ShapesDataset(height=height, width=width, num_frames=frames, seed=seed, length=length,
                             split=split, fps=fps or 8.0, **shapes_kwargs)
    if source not in SOURCES:
        raise PyramidflowError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
    if not path:
        raise PyramidflowError(f"data source {source!r} needs a path (data.path)")
    if source == "latents":
        return LatentClips(path, clean_targets, stages)
    if source == "folder":
        from pyramidflow.data.video import VideoFolderDataset

        return VideoFolderDataset(path, frames=frames, height=height, width=width, fps=fps, stride=stride)
    from pyramidflow.data.manifest import ManifestDataset

    return ManifestDataset(path, frames=frames, height=height, width=width, fps=fps, stride=stride)


def with_images(videos: torch.utils.data.Dataset, images: torch.utils.data.Dataset | None
                ) -> torch.utils.data.Dataset:
    """Videos and one-frame images in one dataset (a training permutation mixes them)."""
    if images is None or len(images) == 0:
        return videos
    return torch.utils.data.ConcatDataset([videos, images])


def captions(dataset, limit: int | None = None) -> list[str]:
    """Captions of a dataset without decoding its videos where the dataset allows it."""
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return [c for part in dataset.datasets for c in captions(part, limit)]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if hasattr(dataset, "attributes") and hasattr(dataset, "caption"):  # procedural: no rendering
        return [dataset.caption(dataset.attributes(i)) for i in range(n)]
    if hasattr(dataset, "entries"):  # video files: captions are in the listing
        return [e.text for e in dataset.entries[:n]]
    if isinstance(dataset, LatentClips):
        return [dataset.cache.caption(i) for i in range(n)]
    return [dataset[i]["text"] for i in range(n)]
