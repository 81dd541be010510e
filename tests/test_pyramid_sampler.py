"""sample (Algorithm 1): Gaussian end-to-end consistency, diffusers agreement, errors."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from gaussian_pyramid import GaussianPyramid
from stats import assert_cov

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, sample

CASES = {
    "spatial": (HaarTransform(), (1, 1, 1, 4, 4)),
    "spatiotemporal": (HaarTransform(temporal=True), (1, 1, 4, 4, 4)),
    "causal": (HaarTransform(temporal=True, causal_first_frame=True), (1, 1, 5, 4, 4)),
}


def _gaussian(kind, seed=0):
    transform, shape = CASES[kind]
    gen = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    root = 0.3 * torch.randn(d, d, generator=gen, dtype=torch.float64)
    cov = root @ root.T + 0.2 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=gen, dtype=torch.float64)
    schedule = PyramidSchedule(3, gain=transform.gain)
    return GaussianPyramid(schedule, transform, shape, mu, cov), schedule, transform, shape


@pytest.mark.parametrize("kind", CASES)
def test_exact_velocity_recovers_the_data_law_in_the_limit(kind):
    """Training path + Euler + jumps are consistent: the sampler's law tends to N(mu, Sigma).

    The mean is exact at any step count (every map is affine and unbiased); the covariance error
    is first order in the step size, and its Richardson extrapolation is second order, so the
    continuous-time limit is exactly Sigma.
    """
    g, *_ = _gaussian(kind)
    laws = {n: g.discrete_law((n, n, n)) for n in (100, 200, 400)}
    for mean, _ in laws.values():
        torch.testing.assert_close(mean, g.mu, rtol=0, atol=1e-10)
    err = {n: (c - g.cov).abs().max().item() for n, (_, c) in laws.items()}
    assert 1.8 < err[100] / err[200] < 2.2 and 1.8 < err[200] / err[400] < 2.2  # first order
    rich = {
        n: (2 * laws[2 * n][1] - laws[n][1] - g.cov).abs().max().item() for n in (100, 200)
    }
    assert rich[100] / rich[200] > 3.0  # second order after extrapolation
    assert rich[200] < 2e-3 * g.cov.abs().max().item()


@pytest.mark.parametrize("kind", CASES)
def test_sampler_follows_the_discrete_law(kind):
    """Monte Carlo: sample() with the exact velocity has the mean/covariance computed in closed form."""
    g, schedule, transform, shape = _gaussian(kind)
    steps = (6, 6, 4)
    n = 20000
    gen = torch.Generator().manual_seed(11)
    out = sample(g.velocity_fn, schedule, transform, (n, *shape[1:]), steps, gen, dtype=torch.float64)
    mean, cov = g.discrete_law(steps)
    assert_cov(out.reshape(n, -1), mean, cov)


@pytest.mark.parametrize("kind", CASES)
def test_sampler_gives_back_mu_and_sigma(kind):
    """Monte Carlo against the data law itself; the only allowance beyond sampling error is the
    known discretisation error at this step count (computed in closed form, first order)."""
    g, schedule, transform, shape = _gaussian(kind)
    steps = (150, 150, 150)
    n = 20000
    out = sample(g.velocity_fn, schedule, transform, (n, *shape[1:]), steps,
                 torch.Generator().manual_seed(3), dtype=torch.float64)
    mean, cov = g.discrete_law(steps)
    slack = ((mean - g.mu).abs(), (cov - g.cov).abs())
    assert slack[1].max() < 0.15 * g.cov.abs().max()  # and it vanishes as steps grow (test above)
    assert_cov(out.reshape(n, -1), g.mu, g.cov, slack=slack)


def test_wrong_jump_would_be_caught():
    """Control: with the jump replaced by plain upsampling, the same check fails."""
    g, schedule, transform, shape = _gaussian("spatial")
    out = sample(g.velocity_fn, schedule, transform, (20000, *shape[1:]), (6, 6, 4),
                 torch.Generator().manual_seed(11), dtype=torch.float64,
                 transition=lambda x, s, t, stage, gen: t.up(x))
    mean, cov = g.discrete_law((6, 6, 4))
    with pytest.raises(AssertionError):
        assert_cov(out.reshape(20000, -1), mean, cov)


def _velocity(x, sigma):
    s = sigma.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return torch.tanh(x) * (1 + s) + 0.1 * torch.sin(3 * x) - 0.5 * s * x


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_one_stage_matches_diffusers_step_for_step(shift):
    n = 10
    schedule, transform = PyramidSchedule(1, shift=shift), HaarTransform()
    shape = (2, 4, 3, 8, 8)
    ours = []
    result = sample(
        lambda x, sigma, stage: _velocity(x, sigma), schedule, transform, shape, (n,),
        torch.Generator().manual_seed(5), callback=lambda st, i, x, s: ours.append(x.clone()),
    )
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # Same grid: diffusers shifts the custom sigmas itself and appends the final 0.
    sched.set_timesteps(sigmas=torch.linspace(1, 0, n + 1, dtype=torch.float64)[:-1].tolist())
    torch.testing.assert_close(sched.sigmas.double(), schedule.sigmas(0, n), rtol=0, atol=1e-6)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    for i, t in enumerate(sched.timesteps):
        sigma = torch.full((shape[0],), float(t) / 1000)
        x = sched.step(_velocity(x, sigma), t, x).prev_sample
        torch.testing.assert_close(x, ours[i], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, result, rtol=1e-5, atol=1e-5)


def test_velocity_fn_sees_each_stage_resolution_and_natural_sigmas():
    schedule, transform = PyramidSchedule(3), HaarTransform()
    seen = []

    def fn(x, sigma, stage):
        seen.append((stage, tuple(x.shape), float(sigma[0])))
        return torch.zeros_like(x)

    out = sample(fn, schedule, transform, (2, 3, 1, 16, 16), (2, 3, 1))
    assert out.shape == (2, 3, 1, 16, 16)
    assert [s[0] for s in seen] == [0, 0, 1, 1, 1, 2]
    assert seen[0][1] == (2, 3, 1, 4, 4) and seen[2][1] == (2, 3, 1, 8, 8) and seen[5][1][3] == 16
    assert seen[0][2] == 1.0 and seen[2][2] == pytest.approx(0.8) and seen[5][2] == pytest.approx(0.5)
    dtypes = set()
    sample(lambda x, s, i: dtypes.add(s.dtype) or torch.zeros_like(x), schedule, transform,
           (1, 1, 1, 8, 8), (1, 1, 1), dtype=torch.float64)
    assert dtypes == {torch.float64}  # exact sigmas for float64 states (float32 otherwise)


def test_explicit_sigmas_and_errors():
    schedule, transform = PyramidSchedule(2), HaarTransform()
    grids = [torch.tensor([1.0, 0.8, 0.5]), torch.tensor([2 / 3, 0.3, 0.0])]
    out = sample(lambda x, s, i: -x, schedule, transform, (1, 1, 1, 4, 4), None, sigmas=grids)
    assert out.shape == (1, 1, 1, 4, 4)
    with pytest.raises(PyramidflowError, match="one step count per stage"):
        sample(lambda x, s, i: x, schedule, transform, (1, 1, 1, 4, 4), (3,))
    with pytest.raises(PyramidflowError, match="stage window"):
        sample(lambda x, s, i: x, schedule, transform, (1, 1, 1, 4, 4), None,
               sigmas=[torch.tensor([1.0, 0.6]), grids[1]])
    with pytest.raises(PyramidflowError, match="non-finite"):
        sample(lambda x, s, i: x, schedule, transform, (1, 1, 1, 4, 4), None,
               sigmas=[torch.tensor([1.0, float("nan"), 0.5]), grids[1]])
    with pytest.raises(PyramidflowError, match="multiple of 2"):
        sample(lambda x, s, i: x, schedule, transform, (1, 1, 1, 5, 4), (2, 2))
    with pytest.raises(PyramidflowError, match="returned shape"):
        sample(lambda x, s, i: x[:, :1], schedule, transform, (1, 2, 1, 4, 4), (2, 2))
