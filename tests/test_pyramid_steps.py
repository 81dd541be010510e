"""Step rules and stage transitions of the sampler: exact identities (float64), the x0-renoise law by
Monte Carlo, differentiable rollouts, errors."""

import pytest
import torch
from stats import assert_mean, assert_white

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import (
    HaarTransform,
    PyramidSchedule,
    euler_step,
    identity_transition,
    renoise,
    sample,
    step_rule,
    x0_renoise_step,
)

F64 = torch.float64


def _path_point(sigma, shape=(4, 2, 1, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=F64)
    eps = torch.randn(shape, generator=g, dtype=F64)
    return x0, eps, (1 - sigma) * x0 + sigma * eps


def test_euler_moves_along_the_straight_path_exactly():
    x0, eps, x = _path_point(0.7)
    out = euler_step(x, eps - x0, 0.7, 0.25)  # the exact velocity of the straight path
    torch.testing.assert_close(out, 0.75 * x0 + 0.25 * eps, rtol=0, atol=1e-14)


def test_x0_renoise_recovers_x0_and_lands_on_the_path():
    x0, eps, x = _path_point(0.6)
    torch.testing.assert_close(x0_renoise_step(x, eps - x0, 0.6, 0.0), x0, rtol=0, atol=1e-14)
    # at sigma_next > 0: (1 - s') x0 + s' eps' with fresh white eps'
    n, s_next = 20_000, 0.3
    x0, eps, x = _path_point(0.6, shape=(n, 1, 1, 2, 2), seed=1)
    g = torch.Generator().manual_seed(2)
    out = x0_renoise_step(x, eps - x0, 0.6, s_next, g)
    fresh = (out - (1 - s_next) * x0) / s_next  # (n, 1, 1, 2, 2): must be N(0, I), independent of eps
    assert_mean(fresh, torch.zeros(1, 1, 2, 2, dtype=F64), 1.0)
    assert_white(fresh.reshape(n, -1))
    assert abs(float((fresh * eps).mean())) < 5 / n**0.5  # not the old noise again


def test_step_rule_names():
    assert step_rule("euler") is euler_step and step_rule("x0_renoise") is x0_renoise_step
    with pytest.raises(PyramidflowError, match="euler, x0_renoise"):
        step_rule("heun")


def test_sampler_uses_the_rule_and_the_transition():
    """With the exact velocity of a point mass x0 the x0 rule returns x0 after any steps; the
    transitions are the jump (default) or the identity (equal resolutions, meeting windows)."""
    transform = HaarTransform()
    schedule = PyramidSchedule(3, gain=transform.gain)
    target = torch.randn(1, 2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)

    def velocity(x, sigma, stage):  # exact for data = down^L(target): v = (x - x0) / sigma
        x0 = transform.down(target, schedule.num_stages - 1 - stage)
        return (x - x0) / sigma.view(-1, 1, 1, 1, 1)

    out = sample(velocity, schedule, transform, target.shape, (2, 2, 1), torch.Generator().manual_seed(0),
                 dtype=F64, step_rule=x0_renoise_step)
    torch.testing.assert_close(out, target, rtol=0, atol=1e-10)
    seen = []

    def jump(x, sched, tr, stage, gen):
        seen.append(stage)
        return renoise(x, sched, tr, stage, gen)

    sample(velocity, schedule, transform, target.shape, (1, 1, 1), dtype=F64, transition=jump)
    assert seen == [0, 1]
    with pytest.raises(PyramidflowError, match="identity transition"):
        identity_transition(target, schedule, transform, 0)


def test_identity_transition_needs_meeting_windows():
    schedule = PyramidSchedule(2, stage_ends=(0.5, 0.0), gain=1.0)  # gain 1: end of 0 == start of 1
    x = torch.randn(1, 1, 1, 4, 4)
    assert identity_transition(x, schedule, HaarTransform(), 0) is x


def test_sampling_is_differentiable_only_when_asked():
    transform = HaarTransform()
    schedule = PyramidSchedule(2, gain=transform.gain)
    w = torch.tensor(0.5, requires_grad=True)

    def velocity(x, sigma, stage):
        return w * x

    shape = (1, 1, 1, 4, 4)
    out = sample(velocity, schedule, transform, shape, (2, 2), torch.Generator().manual_seed(0), grad=True)
    out.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad)
    frozen = sample(velocity, schedule, transform, shape, (2, 2), torch.Generator().manual_seed(0))
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, out.detach())
