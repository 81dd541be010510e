"""The paper's stage shapes at the real Wan2.1-T2V-1.3B transformer and VAE configs (random weights on
the meta device: shapes only, no memory). PyramidalWan section 3: 81x448x832 -> latents 21x56x104 /
11x28x52 / 6x14x26, tokens 30,576 / 4,004 / 546."""

import torch

from pyramidflow.models import PyramidDiT
from pyramidflow.models.vae.wan import WanVAE
from pyramidflow.pyramid import HaarTransform

# diffusers' Wan2.1-T2V-1.3B-Diffusers transformer/config.json
WAN_13B_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def test_real_configs_give_the_papers_stage_shapes_and_tokens():
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = WanVAE(AutoencoderKLWan())  # the default config is Wan2.1's VAE
        model = PyramidDiT(**WAN_13B_TRANSFORMER)
    assert sum(p.numel() for p in model.parameters()) > 1.4e9  # the 1.3B transformer (1.42e9 parameters)
    assert (vae.latent_channels, vae.temporal_compression, vae.spatial_compression) == (16, 4, 8)
    frames, height, width = 81, 448, 832
    latent = (1, 16, 1 + (frames - 1) // vae.temporal_compression, height // vae.spatial_compression,
              width // vae.spatial_compression)
    transform = HaarTransform(temporal=True, causal_first_frame=True)
    shapes = [transform.shape_at(latent, levels) for levels in (2, 1, 0)]  # coarse to fine
    assert [s[2:] for s in shapes] == [(6, 14, 26), (11, 28, 52), (21, 56, 104)]
    tokens = [model.patch_embedding(torch.empty(s, device="meta")).flatten(2).shape[2] for s in shapes]
    assert tokens == [546, 4004, 30576]


def test_one_real_block_runs_the_coarsest_stage():
    # A forward pass at the real width (one of the 30 blocks, real weights' shapes, random values):
    # the 6x14x26 latent of the coarsest stage goes through and comes back with its shape.
    torch.manual_seed(0)
    model = PyramidDiT(**{**WAN_13B_TRANSFORMER, "num_layers": 1}).eval()
    x = torch.randn(1, 16, 6, 14, 26)
    with torch.no_grad():
        out = model(x, torch.full((1,), 900.0), torch.randn(1, 512, 4096)).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
