"""Causal VAE and Wan adapter: shapes, frame checks, normalisation, chunked and tiled decoding."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae import CausalVideoVAE, WanVAE, load_vae, tiled_apply
from pyramidflow.models.vae.tiling import tile_starts


def tiny_vae(**kw) -> CausalVideoVAE:
    torch.manual_seed(0)
    args = dict(
        latent_channels=4,
        block_out_channels=(8, 16, 16),
        spatial_down=(True, True, False),
        temporal_down=(True, True, False),
        layers_per_block=1,
        decoder_layers_per_block=1,
        norm_groups=4,
    )
    args.update(kw)
    return CausalVideoVAE(**args).double().eval()


def video(frames=9, h=16, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h, w, generator=g, dtype=torch.float64) * 2 - 1


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    path = tmp_path_factory.mktemp("wan_vae")
    vae.save_pretrained(path)
    return path


def test_causal_vae_shapes_and_frame_check():
    vae = tiny_vae()
    assert (vae.temporal_compression, vae.spatial_compression, vae.latent_channels) == (4, 4, 4)
    assert vae.latent_shape(13, 16, 24) == (4, 4, 4, 6)
    z = vae.encode(video(9))
    assert z.shape == (1, 4, 3, 4, 6)
    assert vae.decode(z).shape == (1, 3, 9, 16, 24)
    with pytest.raises(PyramidflowError, match=r"1 \+ k\*4 \(valid: 1, 5, 9"):
        vae.encode(video(8))
    with pytest.raises(PyramidflowError, match="multiples of 4"):
        vae.latent_shape(9, 18, 24)


def test_causal_vae_is_causal_and_first_frame_alone():
    vae = tiny_vae()
    x = video(9)
    y = x.clone()
    y[:, :, 5:] = 0.3  # change only the last group of frames
    zx, zy = vae.encode(x), vae.encode(y)
    torch.testing.assert_close(zx[:, :, :2], zy[:, :, :2], rtol=0, atol=1e-12)
    assert (zx[:, :, 2] - zy[:, :, 2]).abs().max() > 1e-3
    # frame 0 alone gives the same first latent as inside the clip
    torch.testing.assert_close(vae.encode(x[:, :, :1]), zx[:, :, :1], rtol=0, atol=1e-12)


def test_chunked_encode_and_decode_equal_whole():
    vae = tiny_vae()
    x = video(17)
    z = vae.encode(x)
    for chunk in (1, 2, 3):
        torch.testing.assert_close(vae.encode(x, chunk_latents=chunk), z, rtol=0, atol=1e-12)
    y = vae.decode(z)
    for chunk in (1, 2, 4):
        torch.testing.assert_close(vae.decode(z, chunk_latents=chunk), y, rtol=0, atol=1e-12)


def test_normalisation_round_trip_and_save_load(tmp_path):
    vae = tiny_vae()
    vae.set_latent_stats([0.1, -0.2, 0.3, 0.0], [2.0, 0.5, 1.0, 3.0])
    x = video(5)
    mean, _ = vae.encode_moments(x)
    z = vae.encode(x)
    std = torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=torch.float64).view(1, -1, 1, 1, 1)
    shift = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(z, (mean - shift) / std)
    vae.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_vae(tmp_path).double()
    assert isinstance(loaded, CausalVideoVAE)
    torch.testing.assert_close(loaded.encode(x), z)
    torch.testing.assert_close(loaded.decode(z), vae.decode(z))


def test_tiled_apply_is_exact_for_local_maps():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 2, 13, 17, generator=g, dtype=torch.float64)
    kernel = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64)

    def local(t):  # 3x3 conv (radius 1 latent pixel) then x4 nearest up-sampling
        b, c, f, h, w = t.shape
        flat = t.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        y = F.interpolate(F.conv2d(flat, kernel, padding=1), scale_factor=4, mode="nearest")
        return y.reshape(b, f, c, 4 * h, 4 * w).permute(0, 2, 1, 3, 4)

    whole = local(z)
    # receptive radius 1 latent pixel <= overlap / 4: the blend never uses a padded border pixel
    tiled = tiled_apply(local, z, tile=8, overlap=4, scale=4)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)
    too_small = tiled_apply(local, z, tile=8, overlap=2, scale=4)
    assert (too_small - whole).abs().max() > 1e-3
    assert tile_starts(13, 6, 3) == [0, 3, 6, 7]
    with pytest.raises(PyramidflowError, match="tile > overlap"):
        tiled_apply(local, z, tile=4, overlap=4, scale=4)


def test_tiled_decode_close_to_whole():
    vae = tiny_vae()
    z = vae.encode(video(5, 64, 64))  # 16 x 16 latents
    whole = vae.decode(z)
    torch.testing.assert_close(vae.decode(z, tile_latent=16), whole, rtol=0, atol=1e-12)
    errs = [
        (
            (vae.decode(z, tile_latent=10, tile_overlap=ov, chunk_latents=1) - whole).norm() / whole.norm()
        ).item()
        for ov in (2, 6)
    ]
    # random weights with per-frame GroupNorm: the seams are approximate, more overlap helps
    assert errs[1] < errs[0] < 0.5, errs


def test_wan_adapter_round_trip(wan_dir):
    vae = load_vae(wan_dir)
    assert isinstance(vae, WanVAE)
    assert (vae.latent_channels, vae.temporal_compression, vae.spatial_compression) == (16, 4, 8)
    x = video(9, 32, 48).float()
    z = vae.encode(x)
    assert z.shape == (1, 16, *vae.latent_shape(9, 32, 48)[1:])
    raw = vae.vae.encode(x).latent_dist.mean
    cfg = vae.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(z, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    y = vae.decode(z)
    torch.testing.assert_close(y, vae.vae.decode(raw).sample, rtol=1e-5, atol=1e-5)
    assert vae.decode(z, tile_latent=4, tile_overlap=2).shape == y.shape
    with pytest.raises(PyramidflowError, match=r"valid: 1, 5, 9"):
        vae.encode(video(7, 32, 48).float())


def test_load_vae_rejects_unknown_class(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(PyramidflowError, match="unsupported VAE class"):
        load_vae(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "missing")


def test_plain_and_rms_variants_stream_exactly():
    plain = dict(block_type="plain", mid_blocks=0, layers_per_block=0, decoder_layers_per_block=0)
    for kw in ({**plain, "block_out_channels": (8, 8, 8)}, dict(norm_groups=0)):
        vae = tiny_vae(**kw)
        x = video(9)
        z = vae.encode(x)
        torch.testing.assert_close(vae.encode(x, chunk_latents=1), z, rtol=0, atol=1e-12)
        torch.testing.assert_close(vae.decode(z, chunk_latents=1), vae.decode(z), rtol=0, atol=1e-12)
    with pytest.raises(PyramidflowError, match="widths cannot change"):
        tiny_vae(**plain)
    with pytest.raises(PyramidflowError, match="block_type"):
        tiny_vae(block_type="dense")


def test_shortcuts_are_causal_average_pool_and_nearest_upsample():
    """With the convs zeroed, DC-AE shortcuts reduce to exact parameter-free maps (float64)."""
    from pyramidflow.models.vae.causal_conv import CausalDownsample, CausalUpsample

    x = video(9, 8, 12)  # (1, 3, 9, 8, 12)
    down = CausalDownsample(3, temporal=True, spatial=True, shortcut=True).double()
    up = CausalUpsample(3, temporal=True, spatial=True, shortcut=True).double()
    for mod in (down, up):
        torch.nn.init.zeros_(mod.conv.conv.weight)
        torch.nn.init.zeros_(mod.conv.conv.bias)
    padded = torch.cat([x[:, :, :1], x], dim=2)  # frame 0 is a group of its own
    expected = F.avg_pool3d(padded, kernel_size=2)
    torch.testing.assert_close(down(x), expected, rtol=0, atol=1e-12)
    # nearest up-sample in space and time, dropping the duplicate of frame 0
    z = expected
    near = z.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    torch.testing.assert_close(up(z), near[:, :, 1:], rtol=0, atol=1e-12)
    # with the convs live, the block is conv(SiLU(x)) + shortcut
    torch.manual_seed(1)
    live = CausalDownsample(3, temporal=True, spatial=True, shortcut=True).double()
    torch.testing.assert_close(live(x), live.conv(F.silu(x)) + expected, rtol=0, atol=1e-12)


def test_shortcut_vae_streams_exactly_and_starts_near_identity_of_means():
    plain = dict(block_type="plain", mid_blocks=0, layers_per_block=0, decoder_layers_per_block=0)
    for kw in ({**plain, "block_out_channels": (8, 8, 8)}, dict(norm_groups=0, block_out_channels=(8, 8, 8))):
        vae = tiny_vae(shortcut=True, **kw)
        x = video(17)
        z = vae.encode(x)
        for chunk in (1, 2):
            torch.testing.assert_close(vae.encode(x, chunk_latents=chunk), z, rtol=0, atol=1e-12)
        y = vae.decode(z)
        for chunk in (1, 3):
            torch.testing.assert_close(vae.decode(z, chunk_latents=chunk), y, rtol=0, atol=1e-12)
    # latent shortcut: the posterior mean is conv_out(...) + features averaged in groups of 2
    vae = tiny_vae(shortcut=True, **plain, block_out_channels=(8, 8, 8))
    enc = vae.encoder
    torch.nn.init.zeros_(enc.conv_out.conv.weight)
    torch.nn.init.zeros_(enc.conv_out.conv.bias)
    x = video(5)
    h = enc.blocks(enc.conv_in(x))
    mean, _ = vae.encode_moments(x)
    torch.testing.assert_close(mean, h.view(1, 4, 2, *h.shape[2:]).mean(dim=2), rtol=0, atol=1e-12)
    with pytest.raises(PyramidflowError, match="multiple of latent_channels"):
        tiny_vae(shortcut=True, latent_channels=3, **plain, block_out_channels=(8, 8, 8))


def test_wan_training_decode_is_the_decode_before_its_clamp(wan_dir):
    # diffusers clamps AutoencoderKLWan's output to [-1, 1]; training must see (and get gradients
    # from) the values beyond it, and agree with decode wherever decode is in range.
    vae = load_vae(wan_dir)
    with torch.no_grad():
        vae.vae.decoder.conv_out.weight.mul_(50.0)  # an overshooting decoder, as at the start of training
    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    raw = vae.decode_unclamped(z)
    clamped = vae.vae.decode(z).sample
    assert raw.shape == clamped.shape == (1, 3, 9, 32, 48)
    assert raw.abs().max() > 1.5  # really unclamped
    torch.testing.assert_close(raw.clamp(-1, 1), clamped, rtol=0, atol=0)
    z.requires_grad_(True)
    vae.decode_unclamped(z).sum().backward()
    assert z.grad.abs().sum() > 0
