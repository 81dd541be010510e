"""The project's causal 3D convolutional VAE (Pyramid Flow paper, Sec. 4; MAGVIT-v2 style).

Encoder: causal conv in, per level ``layers_per_block`` residual blocks then an optional x2 down-sample
in time and/or space, a middle of two residual blocks, and a conv to 2*C (posterior mean and
log-variance). The decoder mirrors it with pixel-shuffle up-samples. Frame 0 is encoded on its own
(causal padding), and every later latent covers ``temporal_compression`` frames, so F = 1 + k*tc
frames give 1 + k latents. The paper's model is 8x8x8 with 16 channels
(``block_out_channels=(128, 256, 512, 512)``, downs on the first three levels); the CPU presets in
``configs/vae-*.yaml`` are smaller. ``shortcut=True`` adds DC-AE's parameter-free residual paths
(Chen et al. 2024): average-pool shortcuts around every down-sample and into the posterior mean,
nearest-neighbour shortcuts around every up-sample and out of the latent. A diagonal Gaussian
posterior is regularised with KL to N(0, I).

Maths: docs/maths.md section 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae.causal_conv import (
    CausalConv3d,
    CausalDownsample,
    CausalUpsample,
    make_block,
    make_norm,
    set_streaming,
)
from pyramidflow.models.vae.interface import VideoAutoencoder


class CausalEncoder(nn.Module):
    def __init__(
        self, in_ch, out_ch, channels, spatial_down, temporal_down, layers, groups, kind, mid, shortcut
    ) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.conv_in = CausalConv3d(in_ch, channels[0], 3)
        blocks: list[nn.Module] = []
        prev = channels[0]
        for ch, sd, td in zip(channels, spatial_down, temporal_down, strict=True):
            for _ in range(layers):
                blocks.append(make_block(prev, ch, groups, kind))
                prev = ch
            if sd or td:
                blocks.append(CausalDownsample(ch, temporal=td, spatial=sd, shortcut=shortcut))
                if kind == "plain" and not shortcut:
                    blocks.append(nn.SiLU())
        blocks += [make_block(prev, prev, groups, kind) for _ in range(mid)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = make_norm(prev, groups) if kind == "res" else nn.Identity()
        self.conv_out = CausalConv3d(prev, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv_in(x))
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        if self.shortcut:  # the posterior mean gets the features averaged in groups (DC-AE)
            c = out.shape[1] // 2
            mean = out[:, :c] + rearrange(h, "b (c g) t y x -> b c g t y x", c=c).mean(dim=2)
            out = torch.cat([mean, out[:, c:]], dim=1)
        return out


class CausalDecoder(nn.Module):
    def __init__(
        self, in_ch, out_ch, channels, spatial_down, temporal_down, layers, groups, kind, mid, shortcut
    ) -> None:
        super().__init__()
        top = channels[-1]
        self.repeat = top // in_ch if shortcut else 0
        self.conv_in = CausalConv3d(in_ch, top, 3)
        blocks: list[nn.Module] = [make_block(top, top, groups, kind) for _ in range(mid)]
        prev = top
        for ch, sd, td in reversed(list(zip(channels, spatial_down, temporal_down, strict=True))):
            for _ in range(layers):
                blocks.append(make_block(prev, ch, groups, kind))
                prev = ch
            if sd or td:
                blocks.append(CausalUpsample(ch, temporal=td, spatial=sd, shortcut=shortcut))
                if kind == "plain" and not shortcut:
                    blocks.append(nn.SiLU())
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = make_norm(prev, groups) if kind == "res" else nn.Identity()
        self.conv_out = CausalConv3d(prev, out_ch, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        if self.repeat:  # each latent channel copied to its group of features (DC-AE)
            h = h + z.repeat_interleave(self.repeat, dim=1)
        h = self.blocks(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class CausalVideoVAE(ModelMixin, ConfigMixin, VideoAutoencoder):
    """Causal video VAE; see the module docstring. Saved with ``save_pretrained`` as safetensors."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        spatial_down: Sequence[bool] = (True, True, True, False),
        temporal_down: Sequence[bool] = (True, True, True, False),
        layers_per_block: int = 2,
        decoder_layers_per_block: int = 3,
        norm_groups: int = 32,
        block_type: str = "res",
        mid_blocks: int = 2,
        shortcut: bool = False,
        latents_mean: Sequence[float] | None = None,
        latents_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        n = len(block_out_channels)
        if len(spatial_down) != n or len(temporal_down) != n:
            raise PyramidflowError(
                f"spatial_down and temporal_down need one flag per level ({n} levels), "
                f"got {len(spatial_down)} and {len(temporal_down)}"
            )
        if min(layers_per_block, decoder_layers_per_block) == 0 and len(set(block_out_channels)) > 1:
            raise PyramidflowError(
                "with 0 layers per block the widths cannot change: make block_out_channels all equal, "
                f"got {list(block_out_channels)}"
            )
        if block_type not in ("res", "plain"):
            raise PyramidflowError(f"block_type must be 'res' or 'plain', got {block_type!r}")
        if shortcut and block_out_channels[-1] % latent_channels:
            raise PyramidflowError(
                "shortcut=True needs the last width to be a multiple of latent_channels, got "
                f"{block_out_channels[-1]} and {latent_channels}"
            )
        for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stats is not None and len(stats) != latent_channels:
                raise PyramidflowError(f"{name} needs {latent_channels} values, got {len(stats)}")
        self.latent_channels = latent_channels
        self.temporal_compression = 2 ** sum(bool(t) for t in temporal_down)
        self.spatial_compression = 2 ** sum(bool(s) for s in spatial_down)
        args = (list(block_out_channels), list(spatial_down), list(temporal_down))
        common = (norm_groups, block_type, mid_blocks, shortcut)
        self.encoder = CausalEncoder(in_channels, 2 * latent_channels, *args, layers_per_block, *common)
        self.decoder = CausalDecoder(latent_channels, in_channels, *args, decoder_layers_per_block, *common)
        with torch.no_grad():  # start with a narrow posterior so early samples carry the signal
            self.encoder.conv_out.conv.bias[latent_channels:].fill_(-4.0)

    def latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.latent_channels
        mean = self.config.latents_mean if self.config.latents_mean is not None else [0.0] * c
        std = self.config.latents_std if self.config.latents_std is not None else [1.0] * c
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)

    def set_latent_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Store per-channel normalisation (measured on data after training) in the config."""
        self.register_to_config(latents_mean=[float(m) for m in mean], latents_std=[float(s) for s in std])

    def _chunked(self, module: nn.Module, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Run ``module`` over consecutive temporal chunks of ``x`` with the causal cache on."""
        set_streaming(module, True)
        try:
            outs, start = [], 0
            for size in sizes:
                outs.append(module(x[:, :, start : start + size]))
                start += size
        finally:
            set_streaming(module, False)
        return torch.cat(outs, dim=2)

    def encode_moments(self, video, chunk_latents=None):
        # video (B, 3, 1 + k*tc, H, W) -> mean, logvar (B, C, 1 + k, H/s, W/s)
        if chunk_latents is None:
            h = self.encoder(video)
        else:
            tc, frames = self.temporal_compression, video.shape[2]
            step = chunk_latents * tc
            sizes = [1] + [min(step, frames - s) for s in range(1, frames, step)]
            h = self._chunked(self.encoder, video, sizes)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_raw(self, z, chunk_latents=None):
        # z (B, C, T, h, w) -> video (B, 3, 1 + (T-1)*tc, h*s, w*s)
        if chunk_latents is None:
            return self.decoder(z)
        t = z.shape[2]
        sizes = [min(chunk_latents, t - s) for s in range(0, t, chunk_latents)]
        return self._chunked(self.decoder, z, sizes)

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: returns (reconstruction, mean, logvar) with a reparameterised sample."""
        self._check_video(video)
        mean, logvar = self.encode_moments(video)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        return self.decode_raw(z), mean, logvar
