"""training_sample: exact path identities (float64) and its distributions by Monte Carlo
(docs/maths.md section 6)."""

import math

import pytest
import torch
from scipy import stats as sps
from stats import assert_mean, assert_white

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, default_stage_weights, training_sample

T = HaarTransform()
S = PyramidSchedule(3)


def _deterministic_parts(x0, schedule, transform, stage, r, pyramid=None):
    """Mean of x_t and of the target given x0 and r (docs/maths.md section 6, written out independently)."""
    s_s, s_e = schedule.windows[stage]
    lv = schedule.levels(stage)
    clean = pyramid[stage] if pyramid else transform.down(x0, lv)
    prev = 0.0
    if stage > 0:
        prev = transform.up(pyramid[stage - 1] if pyramid else transform.down(x0, lv + 1))
    r = r.view(-1, 1, 1, 1, 1)
    start_mean = 0.0 if stage == 0 else (1 - s_s) * prev
    end_mean = (1 - s_e) * clean
    x_mean = end_mean + r * (start_mean - end_mean)
    t_mean = (start_mean - end_mean) / (s_s - s_e)
    return x_mean, t_mean


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_coupled_endpoints_identity(stage, generator):
    x0 = torch.randn(16, 2, 1, 8, 8, dtype=torch.float64)
    ts = training_sample(x0, S, T, stage=stage, generator=generator)
    x_mean, t_mean = _deterministic_parts(x0, S, T, stage, ts.r)
    sigma = ts.sigma.view(-1, 1, 1, 1, 1)
    # x_t - mean = sigma * n and target - mean = n, with the same n (coupled endpoints).
    torch.testing.assert_close((ts.x_t - x_mean) / sigma, ts.target - t_mean, rtol=0, atol=1e-10)
    s_s, s_e = S.windows[stage]
    torch.testing.assert_close(ts.sigma, s_e + ts.r * (s_s - s_e), rtol=0, atol=1e-15)
    assert ts.x_t.shape == T.shape_at(x0.shape, S.levels(stage))


KINDS = {
    "spatial": (HaarTransform(), (1, 1, 1, 4, 4)),
    "spatiotemporal": (HaarTransform(temporal=True), (1, 1, 4, 4, 4)),
    "causal": (HaarTransform(temporal=True, causal_first_frame=True), (1, 1, 5, 4, 4)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_path_endpoints_distribution(kind, stage, generator):
    """Monte Carlo (docs/maths.md section 6):
    start ~ N((1-s_s) up(x0^(i-1)), s_s^2 I), end ~ N((1-s_e) x0^(i),
    s_e^2 I), with one shared white draw; reconstructed from (x_t, r, target)."""
    transform, shape = KINDS[kind]
    schedule = PyramidSchedule(3, gain=transform.gain)
    x0 = torch.randn(shape, dtype=torch.float64).expand(20000, -1, -1, -1, -1).contiguous()
    ts = training_sample(x0, schedule, transform, stage=stage, generator=generator)
    s_s, s_e = schedule.windows[stage]
    r = ts.r.view(-1, 1, 1, 1, 1)
    start = ts.x_t + (1 - r) * (s_s - s_e) * ts.target
    end = ts.x_t - r * (s_s - s_e) * ts.target
    lv = schedule.levels(stage)
    end_mean = (1 - s_e) * transform.down(x0[:1], lv)[0]
    start_mean = torch.zeros_like(end_mean)
    if stage > 0:
        start_mean = (1 - s_s) * transform.up(transform.down(x0[:1], lv + 1))[0]
    assert_mean(start, start_mean, s_s)
    assert_white(((start - start_mean) / s_s).reshape(start.shape[0], -1))
    if s_e > 0:
        assert_mean(end, end_mean, s_e)
        torch.testing.assert_close((end - end_mean) / s_e, (start - start_mean) / s_s, rtol=0, atol=1e-9)
    else:
        torch.testing.assert_close(end, end_mean.expand_as(end), rtol=0, atol=1e-12)


def test_one_stage_is_plain_flow_matching(generator):
    x0 = torch.randn(32, 3, 2, 4, 4, dtype=torch.float64)
    ts = training_sample(x0, PyramidSchedule(1), HaarTransform(), stage=0, generator=generator)
    sigma = ts.sigma.view(-1, 1, 1, 1, 1)
    n = ts.target + x0
    torch.testing.assert_close(ts.x_t, (1 - sigma) * x0 + sigma * n, rtol=0, atol=1e-12)


def test_stage_frequencies_follow_the_weights(generator):
    assert default_stage_weights(3) == (1.0, 2.0, 1.0)
    n = 20000
    x0 = torch.zeros(n, 1, 1, 4, 4)
    counts = torch.bincount(training_sample(x0, S, T, generator=generator).stage, minlength=3)
    p = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    z = (counts - n * p) / torch.sqrt(n * p * (1 - p))
    assert z.abs().max() < 5.5, counts
    counts = torch.bincount(
        training_sample(x0, S, T, generator=generator, stage_weights=(0, 1, 3)).stage, minlength=3
    )
    assert counts[0] == 0 and abs(counts[2] / n - 0.75) < 5.5 * math.sqrt(0.75 * 0.25 / n)


def test_position_densities(generator):
    x0 = torch.zeros(20000, 1, 1, 4, 4)
    r = training_sample(x0, S, T, stage=1, generator=generator).r
    assert sps.kstest(r.numpy(), "uniform").pvalue > 1e-4
    r = training_sample(x0, S, T, stage=1, generator=generator, density="logit_normal",
                        logit_mean=0.5, logit_std=0.8).r
    logit = torch.log(r / (1 - r)).numpy()
    assert sps.kstest(logit, "norm", args=(0.5, 0.8)).pvalue > 1e-4
    with pytest.raises(PyramidflowError, match="uniform, logit_normal"):
        training_sample(x0[:2], S, T, stage=1, density="beta")
    for mean, std in ((float("nan"), 1.0), (0.0, float("inf")), (0.0, 0.0)):
        with pytest.raises(PyramidflowError, match="finite logit_mean and a finite logit_std > 0"):
            training_sample(x0[:2], S, T, stage=1, density="logit_normal", logit_mean=mean, logit_std=std)


def test_mixed_stages_lists_and_regrouping(generator):
    x0 = torch.randn(12, 2, 1, 8, 8, dtype=torch.float64)
    ts = training_sample(x0, S, T, generator=generator)
    assert isinstance(ts.x_t, list) and len(ts.x_t) == 12
    for i in range(12):
        st = int(ts.stage[i])
        assert ts.x_t[i].shape == T.shape_at(x0.shape, S.levels(st))[1:]
        x_mean, t_mean = _deterministic_parts(x0[i : i + 1], S, T, st, ts.r[i : i + 1])
        n = ts.target[i] - t_mean[0]
        torch.testing.assert_close(ts.x_t[i] - x_mean[0], ts.sigma[i] * n, rtol=0, atol=1e-10)
    groups = ts.by_stage()
    assert sum(len(g[0]) for g in groups.values()) == 12
    for st, (idx, x, sigma, tgt) in groups.items():
        assert (ts.stage[idx] == st).all() and x.shape[0] == len(idx) == tgt.shape[0] == sigma.shape[0]
        assert torch.equal(x[0], ts.x_t[int(idx[0])])


def test_clean_pyramid_definition_two(generator):
    x0 = torch.randn(4, 2, 1, 8, 8, dtype=torch.float64)
    pyramid = [torch.randn(T.shape_at(x0.shape, S.levels(i)), dtype=torch.float64) for i in range(3)]
    ts = training_sample(x0, S, T, stage=1, generator=generator, clean_pyramid=pyramid)
    x_mean, t_mean = _deterministic_parts(x0, S, T, 1, ts.r, pyramid)
    sigma = ts.sigma.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close((ts.x_t - x_mean) / sigma, ts.target - t_mean, rtol=0, atol=1e-10)
    # ... and it is not the latent-space (definition 1) path.
    x_mean1, _ = _deterministic_parts(x0, S, T, 1, ts.r)
    assert not torch.allclose(x_mean, x_mean1)
    with pytest.raises(PyramidflowError, match=r"clean_pyramid\[0\] has shape"):
        training_sample(x0, S, T, clean_pyramid=[pyramid[1]] * 3)


def test_reproducible_and_errors():
    x0 = torch.randn(8, 1, 1, 8, 8)
    a = training_sample(x0, S, T, generator=torch.Generator().manual_seed(3))
    b = training_sample(x0, S, T, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a.x_t, b.x_t, strict=True))
    with pytest.raises(PyramidflowError, match="multiple of 4"):
        training_sample(torch.randn(2, 1, 1, 6, 8), S, T)
    with pytest.raises(PyramidflowError, match="out of range"):
        training_sample(x0, S, T, stage=3)
    with pytest.raises(PyramidflowError, match="one per stage"):
        training_sample(x0, S, T, stage_weights=(1, 1))
