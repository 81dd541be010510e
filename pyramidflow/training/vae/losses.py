"""Losses and quality metrics for training the causal VAE.

* Reconstruction: L1 and/or MSE on [-1, 1] pixels plus a structural term 1 - SSIM (Wang et al. 2004,
  Gaussian window 11, sigma 1.5, computed per frame on [0, 1] images), and optionally an L1 on the
  chroma (each pixel's colour minus its grey level; docs/maths.md (18.4)).
* KL of the diagonal Gaussian posterior to N(0, I), averaged over latent elements:
  KL = 0.5 * mean(mu^2 + exp(logvar) - 1 - logvar).
* Hinge GAN losses for the optional patch discriminator (Lim & Ye 2017).
* PSNR (dB, on [0, 1] pixels) and SSIM as validation metrics.
Videos are (B, 3, F, H, W).

Maths: docs/maths.md section 18.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from pyramidflow.models.vae.pixel import to_unit


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per clip, (B,), for videos (B, C, F, H, W) with values in [0, 1]."""
    bsz, ch = a.shape[:2]
    x = rearrange(a, "b c f h w -> (b f) c h w")
    y = rearrange(b, "b c f h w -> (b f) c h w")
    size = min(window, x.shape[-1], x.shape[-2])
    g = _gaussian_window(size, sigma, x.dtype, x.device)
    kx = g.view(1, 1, 1, size).expand(ch, 1, 1, size)
    ky = g.view(1, 1, size, 1).expand(ch, 1, size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # 'valid' separable Gaussian filter
        return F.conv2d(F.conv2d(t, kx, groups=ch), ky, groups=ch)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx**2
    vy = blur(y * y) - my**2
    cov = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.reshape(bsz, -1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per clip, (B,), for videos with values in [0, 1]."""
    mse = ((a - b) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) averaged over latent elements (scalar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def chroma(video: torch.Tensor) -> torch.Tensor:
    """Each pixel's colour minus its grey level (the channel mean), (B, C, F, H, W) -> same shape."""
    return video - video.mean(dim=1, keepdim=True)


def reconstruction_terms(
    recon: torch.Tensor, target: torch.Tensor, l1: float, mse: float, ssim_weight: float,
    chroma_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Weighted-sum parts of the reconstruction loss on [-1, 1] videos; keys name each term."""
    terms: dict[str, torch.Tensor] = {}
    if chroma_weight:
        terms["chroma"] = chroma_weight * (chroma(recon) - chroma(target)).abs().mean()
    if l1:
        terms["l1"] = l1 * (recon - target).abs().mean()
    if mse:
        terms["mse"] = mse * (recon - target).pow(2).mean()
    if ssim_weight:
        terms["ssim"] = ssim_weight * (1 - ssim(to_unit(recon), to_unit(target)).mean())
    return terms


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
