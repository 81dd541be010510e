"""The tensor maths of step distillation (docs/maths.md section 9).

* :func:`student_positions` and :func:`rollout_to` -- backward simulation: the few-step generator's
  own rollout (a step rule inside each stage, the transition between stages) stopped before a chosen
  *exit* step, without autograd; the caller evaluates the generator there with autograd, so the
  gradient reaches exactly one step (DMD2's multi-step training).
* :func:`predict_x0` -- ``x0 = x - sigma v`` (9.1).
* :func:`renoise_at` -- a point of the plain path ``(1 - s) x0 + s eps`` at per-sample levels.
* :func:`dmd_direction` and :func:`dmd_loss` -- the normalised distribution-matching direction and
  its surrogate loss (9.3).

Shapes: states (B, C, T, H, W); per-sample levels (B,); losses per sample (B,).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.sampler import VelocityFn, stage_grids
from pyramidflow.pyramid.schedule import PyramidSchedule
from pyramidflow.pyramid.steps import StepRule, Transition, haar_jump, x0_renoise_step
from pyramidflow.pyramid.transforms import HaarTransform


@dataclass(frozen=True)
class StepPosition:
    """One step of a few-step schedule: ``stage``, its index in the stage, and its levels."""

    stage: int
    index: int
    sigma: float
    sigma_next: float


def student_positions(schedule: PyramidSchedule, steps: Sequence[int]) -> list[StepPosition]:
    """Every step of the per-stage ``steps`` (e.g. 2-2-1), in sampling order; a 0 skips no stage
    (each stage needs one step: a single-stage student is ``PyramidSchedule(1)`` with e.g. (4,))."""
    return [StepPosition(stage, i, values[i], values[i + 1])
            for stage, grid in enumerate(stage_grids(schedule, steps))
            for values in [grid.tolist()] for i in range(len(values) - 1)]


@torch.no_grad()
def rollout_to(
    velocity_fn: VelocityFn,
    schedule: PyramidSchedule,
    transform: HaarTransform,
    shape: Sequence[int],
    steps: Sequence[int],
    exit_step: int,
    generator: torch.Generator | None = None,
    *,
    step_rule: StepRule = x0_renoise_step,
    transition: Transition = haar_jump,
    noise: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, StepPosition]:
    """The generator's state *before* step ``exit_step`` (0-based over all stages) and that step.

    From noise at the coarsest stage (``noise``, or drawn from ``generator``), the steps before the
    exit are taken with ``step_rule`` and ``transition`` exactly as :func:`pyramidflow.pyramid.sample`
    takes them, without autograd. Returns (x at the exit stage's shape, its :class:`StepPosition`).
    """
    positions = student_positions(schedule, steps)
    if not 0 <= exit_step < len(positions):
        raise PyramidflowError(f"exit_step must lie in [0, {len(positions)}), got {exit_step}")
    shape = tuple(int(s) for s in shape)
    coarse = transform.shape_at(shape, schedule.num_stages - 1)
    device = generator.device if generator is not None else "cpu"
    x = (torch.randn(coarse, generator=generator, device=device, dtype=dtype) if noise is None
         else noise.to(device=device, dtype=dtype))
    if tuple(x.shape) != coarse:
        raise PyramidflowError(f"noise must have the coarsest stage's shape {coarse}, got {tuple(x.shape)}")
    sigma_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for k, pos in enumerate(positions[:exit_step]):
        sigma = torch.full((shape[0],), pos.sigma, device=x.device, dtype=sigma_dtype)
        x = step_rule(x, velocity_fn(x, sigma, pos.stage), pos.sigma, pos.sigma_next, generator)
        if positions[k + 1].stage != pos.stage:  # the last step of a stage: go up one level
            x = transition(x, schedule, transform, pos.stage, generator)
    return x, positions[exit_step]


def predict_x0(x: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """(9.1): the clean signal the velocity ``v`` at level ``sigma`` points to, ``x - sigma v``."""
    return x - _per_sample(sigma, x) * v.to(x.dtype)


def renoise_at(x0: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """``(1 - sigma) x0 + sigma noise`` with per-sample ``sigma`` (B,)."""
    s = _per_sample(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def dmd_direction(x0: Tensor, x0_real: Tensor, x0_fake: Tensor, eps: float = 1e-6) -> Tensor:
    """(9.3): ``g = (x0_fake - x0_real) / mean|x0 - x0_real|`` (the mean per sample), no autograd."""
    with torch.no_grad():
        dims = tuple(range(1, x0.ndim))
        scale = (x0 - x0_real).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
        return (x0_fake - x0_real) / scale


def dmd_loss(x0: Tensor, direction: Tensor) -> Tensor:
    """(9.3) per sample: ``1/2 mean (x0 - sg(x0 - g))^2``; its gradient in ``x0`` is ``g / numel``."""
    target = (x0 - direction).detach()
    return 0.5 * (x0 - target).pow(2).flatten(1).mean(1)


def _per_sample(sigma: Tensor | float, x: Tensor) -> Tensor | float:
    if not isinstance(sigma, Tensor):
        return float(sigma)
    return sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
