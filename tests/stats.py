"""Monte Carlo checks with tolerances derived from the sample size.

Each check standardises an estimator by its exact standard error and compares the largest
|z| with a Bonferroni bound: the chance of a false failure is at most ``alpha`` per call.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm


def z_bound(num_tests: int, alpha: float = 1e-6) -> float:
    return float(norm.ppf(1.0 - alpha / (2.0 * max(num_tests, 1))))


def assert_mean(samples: torch.Tensor, expected: torch.Tensor, std: float | torch.Tensor, alpha=1e-6):
    """samples (N, ...) i.i.d. with per-element std ``std``: their mean equals ``expected``."""
    n = samples.shape[0]
    z = (samples.double().mean(0) - expected.double()) / (torch.as_tensor(std).double() / math.sqrt(n))
    bound = z_bound(z.numel(), alpha)
    worst = z.abs().max().item()
    assert worst < bound, f"mean off by {worst:.2f} standard errors (bound {bound:.2f})"


def assert_white(residuals: torch.Tensor, alpha=1e-6):
    """residuals (N, D), known zero mean: covariance equals I (each entry within its SE)."""
    e = residuals.double().reshape(residuals.shape[0], -1)
    n, d = e.shape
    cov = e.T @ e / n
    eye = torch.eye(d, dtype=torch.float64)
    se = torch.sqrt((1.0 + eye) / n)  # Var of the sample second moment of white Gaussians
    z = (cov - eye) / se
    bound = z_bound(d * (d + 1) // 2, alpha)
    worst = z.abs().max().item()
    assert worst < bound, f"covariance off by {worst:.2f} standard errors (bound {bound:.2f})"


def assert_cov(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, alpha=1e-6, slack=None):
    """samples (N, D) ~ N(mean, cov): sample mean and covariance within their standard errors.

    ``slack`` (D,) or (D, D) adds a known deterministic allowance (e.g. a bound on
    discretisation error) to the tolerances, in absolute units.
    """
    x = samples.double()
    n, d = x.shape
    mean, cov = mean.double(), cov.double()
    var = torch.diagonal(cov)
    se_mean = torch.sqrt(var / n)
    c = x - x.mean(0)
    emp = c.T @ c / (n - 1)
    se_cov = torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    bound = z_bound(d + d * (d + 1) // 2, alpha)
    mean_err = (x.mean(0) - mean).abs()
    cov_err = (emp - cov).abs()
    if slack is not None:
        mean_err = (mean_err - slack[0]).clamp_min(0)
        cov_err = (cov_err - slack[1]).clamp_min(0)
    zm = (mean_err / se_mean).max().item()
    zc = (cov_err / se_cov).max().item()
    assert zm < bound, f"mean off by {zm:.2f} standard errors (bound {bound:.2f})"
    assert zc < bound, f"covariance off by {zc:.2f} standard errors (bound {bound:.2f})"
