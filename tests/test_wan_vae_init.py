"""The pooled-copy start of a residual AutoencoderKLWan (docs/maths.md 18.5)."""

import pytest
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae.wan_init import causal_pool, pooled_copy_init
from pyramidflow.training.methods.vae import build_vae
from pyramidflow.training.vae.config import VAEModelConfig


def tiny(residual=True, seed=0):
    torch.manual_seed(seed)
    return build_vae(VAEModelConfig(kind="wan", base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1,
                                    latent_channels=4, temporal_down=(True, True), residual=residual)).vae


def clips(n, seed, frames=9, size=16):
    """Flat backgrounds of random grey level with a moving square of random colour, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, frames, size, size)
    for i in range(n):
        out[i] = torch.rand(1, generator=g) * 2 - 1
        colour = (torch.rand(3, generator=g) * 2 - 1).view(3, 1, 1)
        y, x = torch.randint(0, size - 6, (2,), generator=g).tolist()
        for t in range(frames):
            out[i, :, t, y:y + 6, x + t // 3:x + t // 3 + 6] = colour
    return out


def psnr(a, b):
    return (-10 * torch.log10(((a - b) ** 2).mean(dim=(1, 2, 3, 4)) / 4)).mean().item()


def test_causal_pool_is_frame_zero_then_groups_then_blocks():
    x = torch.arange(2 * 1 * 9 * 4 * 4, dtype=torch.float64).reshape(2, 1, 9, 4, 4)
    p = causal_pool(x, 4, 2)
    assert p.shape == (2, 1, 3, 2, 2)
    assert torch.equal(p[:, :, 0, 1, 0], x[:, :, 0, 2:4, 0:2].mean((-1, -2)))
    assert torch.equal(p[:, :, 2, 0, 1], x[:, :, 5:9, 0:2, 2:4].mean((-1, -2, -3)))
    with pytest.raises(PyramidflowError, match="does not fit"):
        causal_pool(x[:, :, :8], 4, 2)


def test_every_residual_branch_is_closed_so_the_encoder_sees_only_pooled_blocks():
    # With all branches ending in zeros, the features before the encoder's RMS norm are averages of
    # the input over the 4x4 blocks of the VAE's spatial factor: adding a pattern whose every 4x4
    # block sums to zero changes nothing (exactly, float64), while a random vae does see it.
    vae = pooled_copy_init(tiny().double(), clips(8, 0).double())
    x = clips(2, 1).double()
    pattern = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64).repeat(8, 8) * 0.3
    seen = []
    hook = vae.encoder.norm_out.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    with torch.no_grad():
        vae.encode(x)
        vae.encode(x + pattern)
    hook.remove()
    a, b = torch.cat(seen[:len(seen) // 2], 2), torch.cat(seen[len(seen) // 2:], 2)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert a.abs().amax() > 0.1
    raw = tiny(seed=1).double()
    seen.clear()
    hook = raw.encoder.norm_out.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    with torch.no_grad():
        raw.encode(x)
        raw.encode(x + pattern)
    hook.remove()
    assert (torch.cat(seen[:len(seen) // 2], 2) - torch.cat(seen[len(seen) // 2:], 2)).abs().amax() > 1e-3


def test_the_start_reconstructs_colour_and_brightness_of_unseen_clips():
    vae = pooled_copy_init(tiny(), clips(16, 0))
    held_out = clips(8, 100)
    with torch.no_grad():
        recon = vae.decode(vae.encode(held_out).latent_dist.mean).sample
        raw = tiny(seed=2)
        raw_recon = raw.decode(raw.encode(held_out).latent_dist.mean).sample
    assert psnr(recon, held_out) > 18.0 > psnr(raw_recon, held_out) + 5
    # flat colours (pure red, green, blue, white, black) come back as themselves, not as grey
    flat = torch.tensor([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1], [-1, -1, -1]], dtype=torch.float32)
    video = flat.view(5, 3, 1, 1, 1).expand(5, 3, 9, 16, 16).contiguous()
    with torch.no_grad():
        out = vae.decode(vae.encode(video).latent_dist.mean).sample
    centre = out[:, :, 4:, 4:12, 4:12].mean((2, 3, 4))
    assert (centre - flat).abs().amax() < 0.45, centre  # saturated colours come back a little paler
    for i in range(3):  # each primary's own channel stands far above the other two
        assert centre[i, i] - centre[i].sort().values[1] > 1.2, centre


def test_the_posterior_starts_nearly_deterministic_and_bad_models_are_refused():
    vae = pooled_copy_init(tiny(), clips(4, 0), logvar=-6.0)
    with torch.no_grad():
        dist = vae.encode(clips(2, 5)).latent_dist
    assert torch.allclose(dist.logvar, torch.full_like(dist.logvar, -6.0))
    with pytest.raises(PyramidflowError, match="needs a residual AutoencoderKLWan"):
        pooled_copy_init(tiny(residual=False), clips(4, 0))
    narrow = build_vae(VAEModelConfig(kind="wan", base_dim=8, dim_mult=(1, 1), latent_channels=2,
                                      temporal_down=(True,), residual=True)).vae
    with pytest.raises(PyramidflowError, match="at least 3 latent channels"):
        pooled_copy_init(narrow, clips(2, 0, frames=5))
    with pytest.raises(ValueError, match="pooled is for kind: wan"):
        build_vae(VAEModelConfig(init="pooled"))
    with pytest.raises(ValueError, match="unknown VAE init"):
        build_vae(VAEModelConfig(kind="wan", init="zeros"))
