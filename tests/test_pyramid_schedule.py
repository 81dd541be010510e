"""PyramidSchedule: reference windows, natural <-> global levels, grids (docs/maths.md section 3-4)."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import PyramidSchedule, jump_alpha, jump_sigma


def test_reference_windows_three_stages():
    s = PyramidSchedule(3)
    expected = [(1.0, 2 / 3), (0.8, 1 / 3), (0.5, 0.0)]
    for (a, b), (ea, eb) in zip(s.windows, expected, strict=True):
        assert a == pytest.approx(ea, abs=1e-12) and b == pytest.approx(eb, abs=1e-12)


def test_windows_match_the_reference_codes_corrected_start_formula():
    # Pyramid Flow's scheduler (independent formula): with c = 1 - sigma_ori and gamma = 1/3,
    # corrected = c / (sqrt(1 + 1/gamma) (1 - c) + c), start = 1 - corrected.
    gamma = 1 / 3
    for k in (2, 3, 4, 5):
        s = PyramidSchedule(k)
        for i in range(1, k):
            c = 1 - s.stage_ends[i - 1]
            corrected = c / (math.sqrt(1 + 1 / gamma) * (1 - c) + c)
            assert s.windows[i][0] == pytest.approx(1 - corrected, abs=1e-12)


def test_paper_condition_in_t_units():
    # In t = 1 - sigma: e_{k+1} = 2 s_k / (1 + s_k) (Eq. 15's condition), s = end of stage k in t.
    s = PyramidSchedule(4)
    for i in range(3):
        t_end = 1 - s.windows[i][1]
        t_next_start = 1 - s.windows[i + 1][0]
        assert t_end == pytest.approx(2 * t_next_start / (1 + t_next_start), abs=1e-12)


def test_jump_coefficients_reference_figures():
    # alpha / beta for Pyramid Flow's block noise, beta = sigma' * sqrt(3) / 2 (docs/maths.md section 5).
    for sigma, alpha, beta in ((2 / 3, 0.600, 0.693), (1 / 3, 0.750, 0.433)):
        a = jump_alpha(sigma, 2.0)
        b = jump_sigma(sigma, 2.0) * math.sqrt(3) / 2
        assert a == pytest.approx(alpha, rel=5e-3) and b == pytest.approx(beta, rel=5e-3)


@pytest.mark.parametrize("gain", [2.0, 2 * math.sqrt(2)])
def test_global_level_is_continuous_across_jumps(gain):
    s = PyramidSchedule(4, gain=gain)
    for i in range(3):
        assert s.to_global(s.windows[i][1], i) == pytest.approx(s.to_global(s.windows[i + 1][0], i + 1))
    assert s.to_global(s.windows[0][0], 0) == 1.0
    assert s.to_global(s.windows[-1][1], 3) == 0.0


def test_natural_global_roundtrip_and_reference_value():
    s = PyramidSchedule(3)
    assert s.to_global(2 / 3, 0) == pytest.approx(8 / 9, abs=1e-12)
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    for stage in range(3):
        torch.testing.assert_close(s.to_natural(s.to_global(x, stage), stage), x, rtol=0, atol=1e-12)
        odds = s.to_global(x[1:-1], stage) / (1 - s.to_global(x[1:-1], stage))
        torch.testing.assert_close(odds, 2.0 ** (2 - stage) * x[1:-1] / (1 - x[1:-1]), rtol=1e-12, atol=0)


def test_sigma_grid_endpoints_exact_and_monotone():
    s = PyramidSchedule(3, shift=3.0)
    for stage in range(3):
        g = s.sigmas(stage, 7)
        assert g.dtype == torch.float64 and g.numel() == 8
        assert float(g[0]) == s.windows[stage][0] and float(g[-1]) == s.windows[stage][1]
        assert (g[1:] < g[:-1]).all()


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_one_stage_grid_is_diffusers_shifted_grid(shift):
    n = 12
    ours = PyramidSchedule(1, shift=shift).sigmas(0, n)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # diffusers applies its shift to custom sigmas too, and appends the final 0.
    sched.set_timesteps(sigmas=torch.linspace(1, 0, n + 1, dtype=torch.float64)[:-1].tolist())
    torch.testing.assert_close(sched.sigmas.double(), ours, rtol=0, atol=1e-6)


def test_bad_input_errors():
    s = PyramidSchedule(3)
    with pytest.raises(PyramidflowError, match=r"valid stages are 0\.\.2"):
        s.sigmas(3, 10)
    with pytest.raises(PyramidflowError, match="one step count per stage"):
        s.check_steps((20, 20))
    with pytest.raises(PyramidflowError, match=r"finite number in \[0, 1\]"):
        s.to_global(float("nan"), 0)
    with pytest.raises(PyramidflowError, match=r"finite: every noise level must lie in \[0, 1\]"):
        s.to_global(torch.tensor([0.5, float("inf")]), 0)
    with pytest.raises(PyramidflowError, match=r"\[0, 1\]"):
        s.to_natural(1.5, 1)
    with pytest.raises(PyramidflowError, match=r"\[0, 1\], got values from -0.5"):
        s.to_natural(torch.tensor([-0.5, 0.5]), 1)
    with pytest.raises(PyramidflowError, match="finite"):
        PyramidSchedule(3, shift=float("inf"))
    with pytest.raises(PyramidflowError, match="strictly decreasing"):
        PyramidSchedule(3, stage_ends=[0.3, 0.5, 0.0])
    with pytest.raises(PyramidflowError, match="end at sigma 0"):
        PyramidSchedule(2, stage_ends=[0.5, 0.1])
    with pytest.raises(PyramidflowError, match="gain must be >= 1"):
        PyramidSchedule(3, gain=0.5)
    with pytest.raises(PyramidflowError, match="num_stages"):
        PyramidSchedule(0)
