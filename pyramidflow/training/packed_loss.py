"""The pyramidal flow-matching loss as packed token sequences, for every temporal mode
(docs/maths.md sections 6 and 7).

Each example becomes one token sequence for :meth:`PyramidDiT.forward_packed`:

* ``full_sequence``: the whole clip at its drawn stage (one segment), as in
  :func:`pyramidflow.training.flow_loss.pyramid_flow_loss`, but clips of different lengths (videos and
  one-frame images) share one batch.
* ``autoregressive`` (Pyramid Flow section 3.3): the clip is cut into units of ``frames_per_unit``
  frames; a unit u is drawn (``temporal.unit_draw``: uniformly, or as if from clips of variable
  length), its path point at the drawn stage i is the current segment, and the earlier units
  are the history, compressed (the last unit at stage i's level, older ones one level lower per
  unit back, down to the lowest) and corrupted with noise of level U(0, ``corrupt_max``) per
  example, after an optional random translation of each history unit (``history_shift``,
  docs/maths.md (7.4)). History is labelled clean (timestep 0), exactly as sampling sees it; the
  corruption teaches the model to tolerate its own imperfect history. Attention is block-causal
  over units, and only the current unit is in the loss.

Random draws of example j come from its own generator, in order: unit, stage, position, path noise,
corruption level, history moves (``temporal.history_shift`` > 0 only), corruption noise. A batch
split over processes or accumulation steps therefore sees exactly the draws of the whole batch (the
trainer's invariance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.lora import stage_adapters
from pyramidflow.models.segments import TokenSegment
from pyramidflow.models.velocity import unit_token_segments
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, TemporalConfig, training_sample
from pyramidflow.pyramid.temporal import (
    HistoryUnit,
    compress_history,
    corrupt,
    draw_unit,
    history_levels,
    history_window,
    split_units,
    translate,
)
from pyramidflow.training.flow_loss import LossOutput


@dataclass
class PackedExample:
    """One training sequence: segments (history first, current last) and the current target."""

    segments: list[TokenSegment]
    target: Tensor  # (1, C, F, h, w): velocity of the current segment
    stage: int
    sigma: Tensor  # (1,)
    unit: int


def draw_example(
    x0: Tensor,
    schedule: PyramidSchedule,
    transform: HaarTransform,
    generator: torch.Generator,
    temporal: TemporalConfig,
    patch_frames: int,
    device=None,
    clean_pyramid: Sequence[Tensor] | None = None,
    patchify: bool = False,
    **path_kwargs,
) -> PackedExample:
    """The sequence of one example x0 (1, C, T, H, W) (draw order: module docstring).

    ``clean_pyramid``: definition-2 clean signals of the example, one per stage, coarse to fine
    (docs/maths.md section 6); in autoregressive mode they also give the compressed history (a
    spatial transform is needed: every level keeps the clip's frames). Drawn where x0 is; the
    returned tensors are moved to ``device`` (default: x0's). ``patchify``: the current segment runs
    at the stage's patch level (a patchification pyramid, docs/maths.md section 9).
    """
    device = x0.device if device is None else device
    if x0.dim() != 5 or x0.shape[0] != 1:
        raise PyramidflowError(f"an example must be (1, C, T, H, W), got {tuple(x0.shape)}")
    ar = temporal.autoregressive
    units = split_units(x0, temporal.frames_per_unit) if ar else [x0]
    pyramid_units = None if clean_pyramid is None else _pyramid_units(clean_pyramid, x0.shape[2], temporal)
    u = draw_unit(len(units), temporal.unit_draw, generator)
    extra = {"clean_pyramid": [level[u] for level in pyramid_units]} if pyramid_units is not None else {}
    ts = training_sample(units[u], schedule, transform, generator=generator, **path_kwargs, **extra)
    stage = int(ts.stage[0])
    x_t = ts.x_t[0][None] if isinstance(ts.x_t, list) else ts.x_t
    target = ts.target[0][None] if isinstance(ts.target, list) else ts.target
    if pyramid_units is None:
        history = compress_history(units[:u], stage, schedule.num_stages, transform, temporal.max_history)
    else:  # level L of unit i is entry K - 1 - L of its pyramid
        kept = history_window(u, temporal.max_history)
        levels = history_levels(len(kept), stage, schedule.num_stages)
        history = [HistoryUnit(pyramid_units[schedule.num_stages - 1 - lv][i], lv, i)
                   for i, lv in zip(kept, levels, strict=True)]
    level = None
    if history and temporal.corrupt_max > 0:
        level = torch.rand((), generator=generator, dtype=torch.float64) * temporal.corrupt_max
    if history and temporal.history_shift > 0:  # (7.4): one move per unit, in full-resolution pixels
        moves = temporal.history_shift * torch.randn((len(history), 2), generator=generator,
                                                     dtype=torch.float64)
        history = [HistoryUnit(translate(h.latent, *(m / 2 ** h.level).tolist()), h.level, h.unit)
                   for h, m in zip(history, moves, strict=True)]
    if level is not None:
        history = [HistoryUnit(corrupt(h.latent, float(level), generator), h.level, h.unit) for h in history]
    hist, current = unit_token_segments(history, x_t, ts.sigma, u, stage, schedule.num_stages, patch_frames)
    if patchify:
        current = replace(current, patch_level=stage)
    segments = [replace(s, latent=s.latent.to(device), timestep=torch.as_tensor(s.timestep).to(device))
                for s in (*hist, current)]
    return PackedExample(segments, target.to(device), stage, ts.sigma.to(device), u)


def _pyramid_units(pyramid: Sequence[Tensor], frames: int, temporal: TemporalConfig) -> list[list[Tensor]]:
    """Each level (1, C, T, h, w) of a definition-2 pyramid cut into the example's units."""
    if not temporal.autoregressive:
        return [[level] for level in pyramid]
    if any(level.shape[2] != frames for level in pyramid):
        raise PyramidflowError("autoregressive training with definition-2 clean targets needs every level to "
                               f"keep the clip's {frames} frames (a spatial pyramid), got "
                               f"{[level.shape[2] for level in pyramid]}")
    return [split_units(level, temporal.frames_per_unit) for level in pyramid]


def packed_flow_loss(
    model,
    x0: Sequence[Tensor],
    text: Tensor,
    schedule: PyramidSchedule,
    transform: HaarTransform,
    generators: Sequence[torch.Generator],
    temporal: TemporalConfig,
    clean_pyramids: Sequence[Sequence[Tensor] | None] | None = None,
    patchify: bool = False,
    **path_kwargs,
) -> LossOutput:
    """Loss over examples ``x0[j]`` (1 or no batch dim: (C, T_j, H, W)), texts (B, L, D), one packed call.

    Paths are drawn where the examples are (e.g. the CPU, with CPU generators); the model runs where
    ``text`` is.

    ``clean_pyramids``: per example None or its definition-2 pyramid (:func:`draw_example`);
    ``patchify``: as there.
    ``path_kwargs`` go to :func:`training_sample` (``stage_weights``, ``density``, ...). The loss
    of an example is the mean squared error over its current segment; ``loss`` is the batch mean.
    """
    temporal.check()
    if stage_adapters(model):
        raise PyramidflowError("per-stage LoRA adapters need one model call per stage: train them with "
                               "full-sequence clips of one shape (not autoregressive, packed or sharded)")
    if len(x0) != len(generators) or len(x0) != text.shape[0]:
        raise PyramidflowError(f"{len(x0)} examples, {len(generators)} generators and "
                               f"{text.shape[0]} texts must match")
    patch_frames = int(model.config.patch_size[0])
    pyramids = clean_pyramids if clean_pyramids is not None else [None] * len(x0)
    examples = [
        draw_example(x if x.dim() == 5 else x[None], schedule, transform, g, temporal, patch_frames,
                     text.device, clean_pyramid=p, patchify=patchify, **path_kwargs)
        for x, g, p in zip(x0, generators, pyramids, strict=True)
    ]
    outs = model.forward_packed([e.segments for e in examples], list(text.split(1, dim=0)))
    errs = torch.stack([(out[-1].float() - e.target.float()).pow(2).mean() for out, e in zip(outs, examples,
                                                                                         strict=True)])
    stage = torch.tensor([e.stage for e in examples], dtype=torch.long, device=errs.device)
    per_stage = {int(s): float(errs.detach()[stage == s].mean()) for s in stage.unique().tolist()}
    total = errs.sum()
    return LossOutput(total / len(examples), errs.detach(), stage, torch.cat([e.sigma for e in examples]),
                      per_stage, total)


def split_batch(videos: Sequence[Tensor]) -> Tensor | list[Tensor]:
    """Stack equal-shaped examples; keep a list when shapes differ (videos mixed with images)."""
    shapes = {tuple(v.shape) for v in videos}
    return torch.stack(list(videos)) if len(shapes) == 1 else list(videos)

