"""Step rules inside a stage and transitions between stages, for :func:`pyramidflow.pyramid.sample`.

A *step rule* moves the state from ``sigma`` to ``sigma_next`` (< sigma) within one stage, given the
velocity ``v = dx/dsigma`` predicted at ``(x, sigma)``:

* :func:`euler_step` (docs/maths.md section 5, Algorithm 1): ``x + (sigma_next - sigma) v``.
* :func:`x0_renoise_step` (section 9, few-step sampling): predict the clean signal
  ``x0 = x - sigma v``, then draw a fresh point of the path at ``sigma_next``:
  ``(1 - sigma_next) x0 + sigma_next eps``. At ``sigma_next = 0`` it returns ``x0``. On a
  pyramid's coupled path this prediction is the stage's clean signal only in stages whose path has
  one clean end (the first and the last); in a middle stage it is off by the term of (9.2), so a
  few-step model is trained (distilled) for the rule it is sampled with.

A *transition* takes the end of stage ``i`` to the start of stage ``i + 1``:

* :func:`haar_jump`: the exact renoising jump one level up (section 5).
* :func:`identity_transition`: nothing to do, for stages that share a resolution (pyramidal
  patchification, section 9), whose windows must then meet.

Shapes: ``x`` and ``v`` are (B, C, T, H, W); ``sigma`` and ``sigma_next`` are Python floats.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.renoise import renoise
from pyramidflow.pyramid.schedule import PyramidSchedule
from pyramidflow.pyramid.transforms import HaarTransform

StepRule = Callable[[Tensor, Tensor, float, float, "torch.Generator | None"], Tensor]
Transition = Callable[[Tensor, PyramidSchedule, HaarTransform, int, "torch.Generator | None"], Tensor]


def euler_step(x: Tensor, v: Tensor, sigma: float, sigma_next: float, generator=None) -> Tensor:
    """One Euler step of dx/dsigma = v from ``sigma`` to ``sigma_next``."""
    return x + (sigma_next - sigma) * v.to(x.dtype)


def x0_renoise_step(x: Tensor, v: Tensor, sigma: float, sigma_next: float, generator=None) -> Tensor:
    """Predict x0 = x - sigma v and put it back on the path at ``sigma_next`` with fresh noise."""
    x0 = x - sigma * v.to(x.dtype)
    if sigma_next <= 0.0:
        return x0
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (1.0 - sigma_next) * x0 + sigma_next * eps


def haar_jump(x: Tensor, schedule: PyramidSchedule, transform: HaarTransform, stage: int,
              generator=None) -> Tensor:
    """End of ``stage`` -> start of ``stage + 1`` one level up (:func:`pyramidflow.pyramid.renoise`)."""
    return renoise(x, schedule, transform, stage, generator)


def identity_transition(x: Tensor, schedule: PyramidSchedule, transform: HaarTransform, stage: int,
                        generator=None) -> Tensor:
    """Stages at one resolution: the state carries over; the windows must meet."""
    end, start = schedule.windows[stage][1], schedule.windows[stage + 1][0]
    if abs(end - start) > 1e-9:
        raise PyramidflowError(f"an identity transition needs stage {stage} to end where stage {stage + 1} "
                               f"starts, got {end:.6f} -> {start:.6f}")
    return x


STEP_RULES: dict[str, StepRule] = {"euler": euler_step, "x0_renoise": x0_renoise_step}


def step_rule(name: str) -> StepRule:
    """The step rule called ``name`` (a clear error naming the valid ones)."""
    if name not in STEP_RULES:
        raise PyramidflowError(f"unknown step rule {name!r}; valid: {', '.join(STEP_RULES)}")
    return STEP_RULES[name]
