"""Per-level calibration (docs/maths.md section 4, (4.2)-(4.3)): exact on piecewise-constant data,
c_eff = 1 on white noise (Monte Carlo), calibrated ends land on the nominal perceived levels."""

import math

import pytest
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import HaarTransform, PyramidSchedule
from pyramidflow.pyramid.calibration import calibrated_stage_ends, measure_levels, perceived_sigma


@pytest.mark.parametrize("kind", ["spatial", "causal"])
def test_piecewise_constant_data_keeps_the_exact_gain(kind):
    t = HaarTransform(temporal=kind == "causal", causal_first_frame=kind == "causal")
    coarse = torch.randn(3, 2, 2 if kind == "causal" else 4, 2, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))
    x0 = t.up(coarse, 2)  # constant inside every 2-level block
    stats = measure_levels([x0], t, 2)
    for s in stats:
        torch.testing.assert_close(torch.tensor(s.gain), torch.tensor(s.exact_gain), rtol=1e-12, atol=0)
        assert s.low_share == pytest.approx([1.0] * len(t.groups), abs=1e-12)
    assert stats[1].rho == pytest.approx(1.0, abs=1e-12)  # the signal is as loud at every level
    sched = PyramidSchedule(3, gain=t.gain)
    assert calibrated_stage_ends(sched, [s.rho for s in stats]) == pytest.approx(list(sched.stage_ends))


def test_white_noise_has_gain_one_and_quieter_levels():
    # Monte Carlo: the low band of white noise holds 1/m of the energy, so c_eff = 1 and
    # rho_L = c^-L; the sample sums have relative standard error sqrt(2 / n).
    t = HaarTransform()
    x0 = torch.randn(64, 4, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    stats = measure_levels(x0.split(16), t, 2)
    n = x0.numel() // 4 ** 2  # entries at the coarsest level measured
    tol = 6 * math.sqrt(2 / n)
    assert stats[0].gain[0] == pytest.approx(1.0, rel=tol) and stats[1].gain[0] == pytest.approx(1.0, rel=tol)
    assert stats[1].rho == pytest.approx(0.25, rel=tol)  # c^-2 with c = 2


def test_calibrated_ends_are_perceived_as_the_nominal_ends():
    sched = PyramidSchedule(3, gain=2.0)
    rhos = [0.8, 0.5]
    ends = calibrated_stage_ends(sched, rhos)
    assert ends[-1] == 0.0 and ends[0] < sched.stage_ends[0] and ends[1] < sched.stage_ends[1]
    for i, end in enumerate(ends[:-1]):  # stage i lives 2 - i levels down
        assert perceived_sigma(end, rhos[1 - i]) == pytest.approx(sched.stage_ends[i], abs=1e-12)
    PyramidSchedule(3, stage_ends=ends, gain=2.0)  # a valid schedule
    with pytest.raises(PyramidflowError, match="need rho for 2 levels"):
        calibrated_stage_ends(sched, [0.8])
    with pytest.raises(PyramidflowError, match="no data"):
        measure_levels([], HaarTransform(), 1)
