"""Algorithm 1: pyramidal sampling with any velocity function (docs/maths.md sections 3 and 5).

Noise at the coarsest level, a step rule along each stage's sigma grid (Euler by default; the
x0-renoise rule for few-step models, :mod:`pyramidflow.pyramid.steps`), a transition between stages
(the renoising jump by default). The state is kept in the requested dtype (float32 by default); the
velocity function is given natural sigmas (the model's timestep is made in
:mod:`pyramidflow.models.velocity`). Runs without autograd unless ``grad=True`` (a differentiable
rollout, e.g. for distillation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.schedule import PyramidSchedule
from pyramidflow.pyramid.steps import StepRule, Transition, euler_step, haar_jump
from pyramidflow.pyramid.transforms import HaarTransform

VelocityFn = Callable[[Tensor, Tensor, int], Tensor]
StepCallback = Callable[[int, int, Tensor, float], None]

_GRID_TOL = 1e-6


def _check_grid(grid: Tensor, stage: int, window: tuple[float, float]) -> Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float64).flatten().cpu()
    if grid.numel() < 2:
        raise PyramidflowError(f"the sigma grid of stage {stage} needs at least 2 values (one step)")
    if not torch.isfinite(grid).all():
        raise PyramidflowError(f"the sigma grid of stage {stage} has non-finite values: {grid.tolist()}")
    if (grid[1:] >= grid[:-1]).any():
        raise PyramidflowError(f"the sigma grid of stage {stage} must be strictly decreasing")
    start, end = window
    if abs(float(grid[0]) - start) > _GRID_TOL or abs(float(grid[-1]) - end) > _GRID_TOL:
        raise PyramidflowError(
            f"the sigma grid of stage {stage} runs {float(grid[0]):.6f} -> {float(grid[-1]):.6f}, "
            f"but the stage window is {start:.6f} -> {end:.6f}"
        )
    return grid


def stage_grids(
    schedule: PyramidSchedule, steps: Sequence[int] | None, sigmas: Sequence[Tensor] | None = None
) -> list[Tensor]:
    """Validated float64 sigma grids, one per stage (from ``steps`` or the explicit ``sigmas``)."""
    if sigmas is not None:
        if len(sigmas) != schedule.num_stages:
            raise PyramidflowError(
                f"sigmas has {len(sigmas)} grids but the schedule has {schedule.num_stages} stages"
            )
        return [_check_grid(g, i, schedule.windows[i]) for i, g in enumerate(sigmas)]
    steps = schedule.check_steps(steps if steps is not None else ())
    return [schedule.sigmas(i, n) for i, n in enumerate(steps)]


def sample(
    velocity_fn: VelocityFn,
    schedule: PyramidSchedule,
    transform: HaarTransform,
    shape: Sequence[int],
    steps: Sequence[int] | None,
    generator: torch.Generator | None = None,
    sigmas: Sequence[Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: StepCallback | None = None,
    step_rule: StepRule = euler_step,
    transition: Transition = haar_jump,
    grad: bool = False,
    noise: Tensor | None = None,
) -> Tensor:
    """Generate a full-resolution (B, C, T, H, W) sample.

    Args:
        velocity_fn: ``f(x, sigma (B,), stage) -> dx/dsigma`` at the stage's resolution.
        shape: full-resolution (B, C, T, H, W).
        steps: Euler steps per stage, e.g. (20, 20, 20); ignored when ``sigmas`` is given.
        sigmas: optional per-stage grids replacing ``schedule.sigmas``; each must run exactly
            from the stage's start to its end.
        callback: ``callback(stage, step, x, sigma_next)`` after every step.
        step_rule: ``rule(x, v, sigma, sigma_next, generator)`` (default :func:`euler_step`).
        transition: ``t(x, schedule, transform, stage, generator)`` between stages (default the jump).
        grad: keep autograd on (default off: no graph is built).
        noise: the starting point, pure noise at the coarsest stage's shape (default: drawn from
            ``generator``); later stages still draw their jump noise from ``generator``.
    """
    with torch.set_grad_enabled(grad):
        return _sample(velocity_fn, schedule, transform, shape, steps, generator, sigmas, device, dtype,
                       callback, step_rule, transition, noise)


def _sample(velocity_fn, schedule, transform, shape, steps, generator, sigmas, device, dtype, callback,
            step_rule, transition, noise=None) -> Tensor:
    grids = stage_grids(schedule, steps, sigmas)
    shape = tuple(int(s) for s in shape)
    coarse = transform.shape_at(shape, schedule.num_stages - 1)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    # sigma_start(0) = 1: the coarsest stage starts from pure noise.
    if noise is None:
        x = torch.randn(coarse, generator=generator, device=device, dtype=dtype)
    elif tuple(noise.shape) != coarse:
        raise PyramidflowError(f"noise must have the coarsest stage's shape {coarse}, got "
                               f"{tuple(noise.shape)}")
    else:
        x = noise.to(device=device, dtype=dtype)
    batch = shape[0]
    # sigma goes to the network in float32, or float64 when the state is float64 (exact tests).
    sigma_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for stage, grid in enumerate(grids):
        values = grid.tolist()
        for step, (s, s_next) in enumerate(zip(values[:-1], values[1:], strict=True)):
            sigma = torch.full((batch,), s, device=x.device, dtype=sigma_dtype)
            v = velocity_fn(x, sigma, stage)
            if v.shape != x.shape:
                raise PyramidflowError(
                    f"velocity_fn returned shape {tuple(v.shape)} at stage {stage}, expected {tuple(x.shape)}"
                )
            x = step_rule(x, v, s, s_next, generator)
            if callback is not None:
                callback(stage, step, x, s_next)
        if stage < schedule.num_stages - 1:
            x = transition(x, schedule, transform, stage, generator)
    return x
