"""Step-distillation maths (docs/maths.md section 9): backward simulation, (9.1) and (9.3)."""

import pytest
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, sample
from pyramidflow.pyramid.distill import (
    dmd_direction,
    dmd_loss,
    predict_x0,
    renoise_at,
    rollout_to,
    student_positions,
)
from pyramidflow.pyramid.steps import haar_jump, x0_renoise_step


def _velocity(x, sigma, stage):  # any smooth field that depends on the stage and the level
    return torch.tanh(x) * (1.0 + stage) - 0.3 * sigma.view(-1, 1, 1, 1, 1).to(x.dtype)


def test_positions_of_a_2_2_1_schedule():
    schedule = PyramidSchedule(3)
    pos = student_positions(schedule, (2, 2, 1))
    assert [(p.stage, p.index) for p in pos] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    for stage in range(3):
        start, end = schedule.windows[stage]
        mine = [p for p in pos if p.stage == stage]
        assert mine[0].sigma == pytest.approx(start) and mine[-1].sigma_next == pytest.approx(end)


@pytest.mark.parametrize("exit_step", [0, 1, 2, 3, 4])
def test_the_rollout_to_an_exit_is_the_sampler_stopped_there(exit_step):
    # Continuing the rollout by hand from its exit state, with the same generator, must give the
    # sampler's own result exactly (float64): same steps, same jumps, same noise draws.
    schedule, transform = PyramidSchedule(3), HaarTransform()
    shape, steps = (2, 1, 1, 8, 8), (2, 2, 1)
    full = sample(_velocity, schedule, transform, shape, steps, torch.Generator().manual_seed(3),
                  dtype=torch.float64, step_rule=x0_renoise_step)
    g = torch.Generator().manual_seed(3)
    x, pos = rollout_to(_velocity, schedule, transform, shape, steps, exit_step, g, dtype=torch.float64)
    positions = student_positions(schedule, steps)
    assert pos == positions[exit_step]
    assert x.shape == transform.shape_at(shape, 2 - pos.stage)
    for k in range(exit_step, len(positions)):
        p = positions[k]
        sigma = torch.full((2,), p.sigma, dtype=torch.float64)
        x = x0_renoise_step(x, _velocity(x, sigma, p.stage), p.sigma, p.sigma_next, g)
        if k + 1 < len(positions) and positions[k + 1].stage != p.stage:
            x = haar_jump(x, schedule, transform, p.stage, g)
    torch.testing.assert_close(x, full, rtol=0, atol=0)


def test_rollout_errors_are_one_line():
    schedule, transform = PyramidSchedule(3), HaarTransform()
    with pytest.raises(PyramidflowError, match=r"exit_step must lie in \[0, 5\)"):
        rollout_to(_velocity, schedule, transform, (1, 1, 1, 8, 8), (2, 2, 1), 5)
    with pytest.raises(PyramidflowError, match="coarsest stage's shape"):
        rollout_to(_velocity, schedule, transform, (1, 1, 1, 8, 8), (2, 2, 1), 1,
                   noise=torch.zeros(1, 1, 1, 8, 8))


def test_x0_and_renoise_are_the_plain_path():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(
        3, 2, 1, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x = renoise_at(x0, sigma, eps)
    torch.testing.assert_close(x[1], 0.5 * x0[1] + 0.5 * eps[1], rtol=0, atol=1e-15)
    torch.testing.assert_close(predict_x0(x, eps - x0, sigma), x0, rtol=0, atol=1e-12)  # exact velocity


def test_the_surrogate_loss_has_gradient_g():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 1, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    real, fake = torch.randn(2, 2, 3, 1, 4, 4, generator=g, dtype=torch.float64)
    d = dmd_direction(x0, real, fake)
    scale = (x0 - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(d, (fake - real) / scale, rtol=0, atol=0)
    assert not d.requires_grad
    dmd_loss(x0, d).sum().backward()
    torch.testing.assert_close(x0.grad, d / x0[0].numel(), rtol=1e-12, atol=1e-15)


def _gaussian_x0(x, sigma, mean, var):
    """E[x0 | x_sigma] for x0 ~ N(mean, var I) on the path (1 - s) x0 + s eps (exact velocity)."""
    a = 1.0 - sigma
    return mean + a * var / (a * a * var + sigma * sigma) * (x - a * mean)


def test_following_the_dmd_direction_moves_the_generator_to_the_real_law():
    # A generator x0 = theta + z (z ~ N(0, 0.25 I)) and a real law N(mu, 0.25 I): with exact x0
    # predictions of both laws at random levels, gradient descent on (9.3) must bring theta to mu.
    # A wrong sign or a missing normaliser would diverge or stall.
    torch.manual_seed(0)
    mu, var = torch.tensor([1.5, -2.0, 0.5]), 0.25
    theta = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=0.5)
    for _ in range(300):
        x0 = theta + var ** 0.5 * torch.randn(64, 3)
        sigma = torch.rand(64, 1) * 0.96 + 0.02
        x = (1 - sigma) * x0.detach() + sigma * torch.randn(64, 3)
        real = _gaussian_x0(x, sigma, mu, var)
        fake = _gaussian_x0(x, sigma, theta.detach(), var)  # a perfect critic of the generator
        d = dmd_direction(x0, real, fake)
        opt.zero_grad()
        dmd_loss(x0, d).mean().backward()
        opt.step()
    torch.testing.assert_close(theta.detach(), mu, rtol=0, atol=0.1)
