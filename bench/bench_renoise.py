"""Benchmark: the renoising jump at a 768p-sized latent, three ways (docs/maths.md section 5).

* ours:       x' = alpha up(x) + sigma' P_detail(eps), vectorised (pyramidflow.pyramid.renoise)
* reference:  the published approach -- a Python loop drawing each 2x2 block's noise from a
              MultivariateNormal with covariance (1 + g) I - g 11^T, g = 1/3, scaled by beta
* cholesky:   the same block covariance sampled in one batch, randn @ chol(cov + 1e-8 I)^T

Reports time per call (and per latent frame) and checks all three give the same distribution:
the empirical within-block covariance of the added noise against sigma'^2 (I - 11^T/4).

    python bench/bench_renoise.py [--frames 4] [--ref-frames 1] [--quick]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
from einops import rearrange

from pyramidflow.pyramid import HaarTransform, PyramidSchedule, renoise
from pyramidflow.pyramid.schedule import jump_alpha, jump_sigma

GAMMA = 1.0 / 3.0


def block_cov(jitter: float = 0.0) -> torch.Tensor:
    """(1 + g) I - g 11^T in float64, plus ``jitter`` I: the matrix is singular (rank 3)."""
    eye = torch.eye(4, dtype=torch.float64)
    return (1 + GAMMA) * eye - GAMMA * torch.ones(4, 4, dtype=torch.float64) + jitter * eye


def reference_block_noise(b, c, t, h, w, generator=None) -> torch.Tensor:
    """One MultivariateNormal draw per 2x2 block, in a Python loop (the published approach)."""
    # Current torch rejects the exactly singular matrix, so it gets the smallest jitter it accepts.
    dist = torch.distributions.MultivariateNormal(torch.zeros(4), covariance_matrix=block_cov(1e-6).float())
    n_blocks = b * c * t * (h // 2) * (w // 2)
    draws = torch.stack([dist.sample() for _ in range(n_blocks)])  # ignores `generator`
    return rearrange(draws, "(b c t h w) (p q) -> b c t (h p) (w q)", b=b, c=c, t=t, h=h // 2, p=2)


def cholesky_block_noise(b, c, t, h, w, generator=None) -> torch.Tensor:
    chol = torch.linalg.cholesky(block_cov(1e-8)).float()
    z = torch.randn(b * c * t * (h // 2) * (w // 2), 4, generator=generator)
    return rearrange(z @ chol.T, "(b c t h w) (p q) -> b c t (h p) (w q)", b=b, c=c, t=t, h=h // 2, p=2)


def jump_with_block_noise(x, sigma, sampler, generator=None):
    """alpha up(x) + beta * block noise with beta = sigma' sqrt(3)/2 (docs/maths.md section 5)."""
    up = torch.repeat_interleave(torch.repeat_interleave(x, 2, dim=-2), 2, dim=-1)
    s_next = jump_sigma(sigma, 2.0)
    beta = s_next * math.sqrt(3.0) / 2.0
    return jump_alpha(sigma, 2.0) * up + beta * sampler(*up.shape, generator=generator)


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def noise_cov_error(noise: torch.Tensor, s_next: float) -> float:
    """max |empirical within-block covariance - sigma'^2 (I - 11^T/4)| relative to sigma'^2."""
    blocks = rearrange(noise, "b c t (h p) (w q) -> (b c t h w) (p q)", p=2, q=2).double()
    emp = blocks.T @ blocks / blocks.shape[0]
    target = s_next**2 * (torch.eye(4) - torch.ones(4, 4) / 4).double()
    return float((emp - target).abs().max() / s_next**2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=4, help="latent frames for the vectorised methods")
    p.add_argument("--ref-frames", type=int, default=1, help="latent frames for the slow reference loop")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = p.parse_args()
    torch.set_num_threads(2)
    c, h, w = 16, 96, 160  # a 768p latent: 768/8 x 1280/8
    if args.quick:
        h, w, args.frames, args.ref_frames = 24, 40, 2, 1
    schedule, transform = PyramidSchedule(3), HaarTransform()
    stage = 1  # the jump into full resolution: sigma = 1/3 -> 1/2
    sigma, s_next = schedule.windows[stage][1], schedule.windows[stage + 1][0]
    gen = torch.Generator().manual_seed(0)
    low = (1, c, args.frames, h // 2, w // 2)
    x = torch.randn(low, generator=gen)
    x_ref = x[:, :, : args.ref_frames]

    t_ours = timeit(lambda: renoise(x, schedule, transform, stage, gen), 5)
    t_chol = timeit(lambda: jump_with_block_noise(x, sigma, cholesky_block_noise, gen), 5)
    t_ref = timeit(lambda: jump_with_block_noise(x_ref, sigma, reference_block_noise), 1)

    # Same distribution: the noise each method adds (output minus alpha up(x)).
    alpha = jump_alpha(sigma, 2.0)
    up = transform.up(x)
    err_ours = noise_cov_error(renoise(x, schedule, transform, stage, gen) - alpha * up, s_next)
    err_chol = noise_cov_error(jump_with_block_noise(x, sigma, cholesky_block_noise, gen) - alpha * up, s_next)
    err_ref = noise_cov_error(
        jump_with_block_noise(x_ref, sigma, reference_block_noise) - alpha * transform.up(x_ref), s_next
    )
    n_ours = x.numel()
    n_ref = x_ref.numel()
    se = math.sqrt(2.0 / n_ours)  # standard error of an entry of the normalised covariance
    se_ref = math.sqrt(2.0 / n_ref)

    print(f"renoise benchmark: latent {c}x{h}x{w}, jump sigma {sigma:.4f} -> {s_next:.4f}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 2 threads")
    print(f"{'method':<12} {'frames':>6} {'ms/call':>10} {'ms/frame':>10} {'speedup':>9} {'cov err':>9} {'SE':>7}")
    ref_per_frame = 1e3 * t_ref / args.ref_frames
    for name, t, frames, err, s in (
        ("reference", t_ref, args.ref_frames, err_ref, se_ref),
        ("cholesky", t_chol, args.frames, err_chol, se),
        ("ours", t_ours, args.frames, err_ours, se),
    ):
        per_frame = 1e3 * t / frames
        print(
            f"{name:<12} {frames:>6} {1e3 * t:>10.2f} {per_frame:>10.3f} "
            f"{ref_per_frame / per_frame:>8.0f}x {err:>9.4f} {s:>7.4f}"
        )


if __name__ == "__main__":
    main()
