"""renoise: exact jump distribution by Monte Carlo (docs/maths.md section 5), reproducibility, errors."""

import math

import pytest
import torch
from stats import assert_mean, assert_white

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, forward_noise, jump, renoise

N = 20000
KINDS = {
    "spatial": (HaarTransform(), (1, 2, 1, 4, 4)),
    "spatiotemporal": (HaarTransform(temporal=True), (1, 1, 4, 4, 4)),
    "causal": (HaarTransform(temporal=True, causal_first_frame=True), (1, 1, 5, 4, 4)),
}


def _jump_cases():
    for kind in KINDS:
        for k in (2, 3, 4):
            for stage in range(k - 1):
                yield kind, k, stage


def _state_before_jump(transform, schedule, stage, full_shape, gen):
    """(x, a): N draws of x = (1 - sigma) a + sigma n one level below ``full_shape``, a fixed.

    The jump only sees the stage's end level and the next start level, not the absolute
    resolution, so one small shape covers every stage of every K.
    """
    low = transform.shape_at(full_shape, 1)
    a = torch.randn(low, generator=gen, dtype=torch.float64)[0]
    sigma = schedule.windows[stage][1]
    n = torch.randn((N, *a.shape), generator=gen, dtype=torch.float64)
    return (1 - sigma) * a + sigma * n, a


@pytest.mark.parametrize("kind,k,stage", list(_jump_cases()))
def test_renoise_mean_and_covariance(kind, k, stage, generator):
    transform, shape = KINDS[kind]
    schedule = PyramidSchedule(k, gain=transform.gain)
    x, a = _state_before_jump(transform, schedule, stage, shape, generator)
    out = renoise(x, schedule, transform, stage, generator)
    target = schedule.windows[stage + 1][0]
    mean = (1 - target) * transform.up(a.unsqueeze(0))[0]
    assert_mean(out, mean, target)
    assert_white((out - mean) / target)


def test_naive_jump_fails_the_same_check(generator):
    """Control: upsampling plus fresh white noise (no detail projection) is detectably wrong."""
    transform, shape = KINDS["spatial"]
    schedule = PyramidSchedule(2)
    x, a = _state_before_jump(transform, schedule, 0, shape, generator)
    sigma, target = schedule.windows[0][1], schedule.windows[1][0]
    alpha = (1 - target) / (1 - sigma)
    naive = alpha * transform.up(x) + math.sqrt(target**2 - (alpha * sigma) ** 2) * torch.randn(
        (N, *shape[1:]), generator=generator, dtype=torch.float64
    )
    mean = (1 - target) * transform.up(a.unsqueeze(0))[0]
    assert_mean(naive, mean, target)  # the mean is right ...
    with pytest.raises(AssertionError, match="covariance"):
        assert_white((naive - mean) / target)  # ... but within-block noise is correlated


def test_causal_groups_share_one_level_after_topup(generator):
    transform, shape = KINDS["causal"]
    schedule = PyramidSchedule(2, gain=transform.gain)
    x, a = _state_before_jump(transform, schedule, 0, shape, generator)
    out = renoise(x, schedule, transform, 0, generator)
    target = schedule.windows[1][0]
    first = (out[:, :, :1] - (1 - target) * transform.up(a.unsqueeze(0))[0, :, :1]) / target
    assert_white(first)  # the spatial-only first frame was topped up to the same sigma


def test_forward_noise_distribution(generator):
    a = torch.randn(8, generator=generator, dtype=torch.float64)
    s1, s2 = 0.3, 0.7
    x = (1 - s1) * a + s1 * torch.randn(N, 8, generator=generator, dtype=torch.float64)
    y = forward_noise(x, s1, s2, generator)
    assert_mean(y, (1 - s2) * a, s2)
    assert_white((y - (1 - s2) * a) / s2)
    with pytest.raises(PyramidflowError, match="sigma_from <= sigma_to"):
        forward_noise(x, 0.7, 0.3)


def test_renoise_is_reproducible_from_the_generator():
    transform, schedule = HaarTransform(), PyramidSchedule(3)
    x = torch.randn(2, 3, 1, 8, 8)
    y1 = renoise(x, schedule, transform, 1, torch.Generator().manual_seed(7))
    y2 = renoise(x, schedule, transform, 1, torch.Generator().manual_seed(7))
    y3 = renoise(x, schedule, transform, 1, torch.Generator().manual_seed(8))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert y1.shape == (2, 3, 1, 16, 16)


def test_renoise_errors():
    transform, schedule = HaarTransform(), PyramidSchedule(3)
    x = torch.randn(1, 1, 1, 4, 4)
    with pytest.raises(PyramidflowError, match="last stage"):
        renoise(x, schedule, transform, 2)
    with pytest.raises(PyramidflowError, match="out of range"):
        renoise(x, schedule, transform, 5)
    # A schedule whose gain is below the transform's cannot be reached by a jump.
    with pytest.raises(PyramidflowError, match="gain must be >="):
        renoise(torch.randn(1, 1, 2, 4, 4), PyramidSchedule(2), HaarTransform(temporal=True), 0)
    # Non-finite or out-of-range levels are refused, naming the valid range (no silent NaNs).
    for bad in (float("nan"), float("inf"), -0.1, 1.5):
        with pytest.raises(PyramidflowError, match=r"sigma must be a finite noise level in \[0, 1\]"):
            jump(x, bad, 0.5, transform)
    with pytest.raises(PyramidflowError, match=r"sigma_target must be a finite noise level in \[0, 1\]"):
        jump(x, 0.3, float("nan"), transform)
    with pytest.raises(PyramidflowError, match="finite"):
        forward_noise(x, 0.3, float("nan"))


def test_causal_transform_on_a_single_frame(generator):
    """An image through a causal-first-frame pyramid: only the spatial group exists; it is topped up."""
    transform = HaarTransform(temporal=True, causal_first_frame=True)
    schedule = PyramidSchedule(2, gain=transform.gain)
    x, a = _state_before_jump(transform, schedule, 0, (1, 1, 1, 4, 4), generator)
    out = renoise(x, schedule, transform, 0, generator)
    target = schedule.windows[1][0]
    mean = (1 - target) * transform.up(a.unsqueeze(0))[0]
    assert out.shape[1:] == (1, 1, 4, 4)
    assert_mean(out, mean, target)
    assert_white((out - mean) / target)
