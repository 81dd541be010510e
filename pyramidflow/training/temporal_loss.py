"""The pyramidal flow-matching loss with the temporal pyramid (MATH.md sections 6 and 7).

Each example becomes one token sequence for :meth:`PyramidDiT.forward_packed`:

* ``full_sequence``: the whole clip at its drawn stage (one segment), as in
  :func:`pyramidflow.training.losses.pyramid_flow_loss`, but clips of different lengths (videos and
  one-frame images) share one batch.
* ``autoregressive`` (Pyramid Flow section 3.3): the clip is cut into units of ``frames_per_unit``
  frames; a unit u is drawn uniformly, its path point at the drawn stage i is the current segment,
  and the earlier units are the history, compressed (the last unit at stage i's level, older ones
  one level lower per unit back, down to the lowest) and corrupted with noise of level
  U(0, ``corrupt_max``) per example. History is labelled clean (timestep 0), exactly as sampling
  sees it; the corruption teaches the model to tolerate its own imperfect history. Attention is
  block-causal over units, and only the current unit is in the loss.

Random draws of example j come from its own generator, in order: unit, stage, position, path noise,
corruption level, corruption noise. A batch split over processes or accumulation steps therefore
sees exactly the draws of the whole batch (the trainer's invariance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.segments import TokenSegment
from pyramidflow.models.unit_velocity import unit_segments
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, training_sample
from pyramidflow.pyramid.temporal import HistoryUnit, compress_history, corrupt, split_units
from pyramidflow.training.losses import LossOutput

MODES = ("full_sequence", "autoregressive")


@dataclass
class TemporalConfig:
    """How a clip is generated: all frames at once, or unit by unit with the temporal pyramid."""

    mode: str = "full_sequence"  # full_sequence | autoregressive
    frames_per_unit: int = 1  # frames (model space: latent frames) per autoregressive unit
    corrupt_max: float = 1 / 3  # training history noise level ~ U(0, corrupt_max)
    max_history: int | None = None  # autoregressive: history units kept (the most recent); None: all

    def check(self) -> None:
        if self.mode not in MODES:
            raise PyramidflowError(f"unknown temporal mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.frames_per_unit < 1:
            raise PyramidflowError(f"frames_per_unit must be >= 1, got {self.frames_per_unit}")
        if not 0.0 <= self.corrupt_max <= 1.0:
            raise PyramidflowError(f"corrupt_max must lie in [0, 1], got {self.corrupt_max}")
        if self.max_history is not None and self.max_history < 1:
            raise PyramidflowError(f"max_history must be >= 1 (or null for all), got {self.max_history}")

    @property
    def autoregressive(self) -> bool:
        return self.mode == "autoregressive"


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
    timestep_scale: float = 1000.0,
    device=None,
    **path_kwargs,
) -> PackedExample:
    """The sequence of one example x0 (1, C, T, H, W) (draw order: module docstring).

    Drawn where x0 is; the returned tensors are moved to ``device`` (default: x0's).
    """
    device = x0.device if device is None else device
    if x0.dim() != 5 or x0.shape[0] != 1:
        raise PyramidflowError(f"an example must be (1, C, T, H, W), got {tuple(x0.shape)}")
    units = split_units(x0, temporal.frames_per_unit) if temporal.autoregressive else [x0]
    u = int(torch.randint(len(units), (), generator=generator)) if len(units) > 1 else 0
    ts = training_sample(units[u], schedule, transform, generator=generator, **path_kwargs)
    stage = int(ts.stage[0])
    x_t = ts.x_t[0][None] if isinstance(ts.x_t, list) else ts.x_t
    target = ts.target[0][None] if isinstance(ts.target, list) else ts.target
    history = compress_history(units[:u], stage, schedule.num_stages, transform, temporal.max_history)
    if history and temporal.corrupt_max > 0:
        level = torch.rand((), generator=generator, dtype=torch.float64) * temporal.corrupt_max
        history = [HistoryUnit(corrupt(h.latent, float(level), generator), h.level, h.unit) for h in history]
    hist, current = unit_segments(history, x_t, (timestep_scale * ts.sigma).float(), u, stage,
                                  schedule.num_stages, patch_frames)
    segments = [replace(s, latent=s.latent.to(device), timestep=torch.as_tensor(s.timestep).to(device))
                for s in (*hist, current)]
    return PackedExample(segments, target.to(device), stage, ts.sigma.to(device), u)


def packed_flow_loss(
    model,
    x0: Sequence[Tensor],
    text: Tensor,
    schedule: PyramidSchedule,
    transform: HaarTransform,
    generators: Sequence[torch.Generator],
    temporal: TemporalConfig,
    *,
    timestep_scale: float = 1000.0,
    **path_kwargs,
) -> LossOutput:
    """Loss over examples ``x0[j]`` (1 or no batch dim: (C, T_j, H, W)), texts (B, L, D), one packed call.

    Paths are drawn where the examples are (e.g. the CPU, with CPU generators); the model runs where
    ``text`` is.

    ``path_kwargs`` go to :func:`training_sample` (``stage_weights``, ``density``, ...). The loss
    of an example is the mean squared error over its current segment; ``loss`` is the batch mean.
    """
    temporal.check()
    if len(x0) != len(generators) or len(x0) != text.shape[0]:
        raise PyramidflowError(f"{len(x0)} examples, {len(generators)} generators and "
                               f"{text.shape[0]} texts must match")
    patch_frames = int(model.config.patch_size[0])
    examples = [
        draw_example(x if x.dim() == 5 else x[None], schedule, transform, g, temporal, patch_frames,
                     timestep_scale, text.device, **path_kwargs)
        for x, g in zip(x0, generators, strict=True)
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

