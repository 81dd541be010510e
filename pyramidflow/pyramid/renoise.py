"""The jump between stages: inference renoising (docs/maths.md section 5).

At the end of stage i the sample is x = (1 - sigma) a + sigma n at low resolution. One level up,

    alpha  = 1 / (1 + (c - 1) sigma)
    sigma' = c sigma / (1 + (c - 1) sigma)
    x'     = alpha up(x) + sigma' P_detail(eps),   eps ~ N(0, I) fresh,

so x' = (1 - sigma') up(a) + sigma' eps' with eps' white. Pyramid Flow's block noise with
covariance (1 + gamma) I - gamma 11^T is the same distribution; here it is one vectorised line.

Token groups with different gains (a causal first frame, c = 2, beside c = 2 sqrt 2) land at
different sigma'; every group is brought to the schedule's start level by ``forward_noise``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.schedule import PyramidSchedule, jump_alpha, jump_sigma
from pyramidflow.pyramid.transforms import HaarTransform

_TOL = 1e-9


def _level(value, name: str) -> float:
    """A noise level as a float, or a clear error unless it is finite and in [0, 1]."""
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise PyramidflowError(f"{name} must be a finite noise level in [0, 1], got {value}")
    return value


def forward_noise(x: Tensor, sigma_from: float, sigma_to: float, generator=None) -> Tensor:
    """Raise the noise level of x = (1-s1) a + s1 n to s2 >= s1 (docs/maths.md section 5, last formula).

    x -> ((1 - s2)/(1 - s1)) x + sqrt(s2^2 - ((1 - s2) s1/(1 - s1))^2) eps.
    """
    s1, s2 = float(sigma_from), float(sigma_to)
    if not (math.isfinite(s1) and math.isfinite(s2)):
        raise PyramidflowError(f"sigmas must be finite noise levels in [0, 1], got {s1} -> {s2}")
    if not 0.0 <= s1 <= s2 <= 1.0:
        raise PyramidflowError(f"forward_noise needs 0 <= sigma_from <= sigma_to <= 1, got {s1} -> {s2}")
    if s1 == 1.0:
        return x.clone()
    scale = (1.0 - s2) / (1.0 - s1)
    std = math.sqrt(max(s2 * s2 - (scale * s1) ** 2, 0.0))
    if std == 0.0:
        return x * scale
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return scale * x + std * eps


def jump(x: Tensor, sigma: float, sigma_target: float, transform: HaarTransform, generator=None) -> Tensor:
    """One level up from natural level ``sigma`` to ``sigma_target`` (the next stage's start).

    Each token group jumps with its own gain; a group that lands below ``sigma_target`` is
    forward-noised to it. Landing above it cannot be undone, so that is an error.
    """
    sigma, sigma_target = _level(sigma, "sigma"), _level(sigma_target, "sigma_target")
    landed = [jump_sigma(sigma, c) for c in transform.group_gains]
    for c, s in zip(transform.group_gains, landed, strict=True):
        if s > sigma_target + _TOL:
            raise PyramidflowError(
                f"a jump with gain {c:.4f} from sigma {sigma:.6f} lands at {s:.6f}, above the next "
                f"stage's start {sigma_target:.6f}; the schedule's gain must be >= every group's gain"
            )
    scales = [(jump_alpha(sigma, c), s) for c, s in zip(transform.group_gains, landed, strict=True)]
    fine = transform.lift(x, scales, generator)  # (B, C, T', 2H, 2W), group g at level landed[g]
    if all(s >= sigma_target - _TOL for s in landed):
        return fine
    parts = [
        forward_noise(part, s, sigma_target, generator) if s < sigma_target - _TOL and part.shape[2] else part
        for part, s in zip(transform.split_groups(fine), landed, strict=True)
    ]
    return transform.merge_groups(parts)


def renoise(
    x_end: Tensor,
    schedule: PyramidSchedule,
    transform: HaarTransform,
    stage: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """End of ``stage`` (low resolution) -> start of ``stage + 1`` (one level up)."""
    stage = schedule.check_stage(stage)
    if stage == schedule.num_stages - 1:
        raise PyramidflowError(
            f"stage {stage} is the last stage: there is no jump after it "
            f"(valid stages for renoise: 0..{schedule.num_stages - 2})"
        )
    sigma = schedule.windows[stage][1]
    target = schedule.windows[stage + 1][0]
    return jump(x_end, sigma, target, transform, generator)
