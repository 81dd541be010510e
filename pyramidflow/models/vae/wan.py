"""The shared VAE interface over diffusers' ``AutoencoderKLWan`` (Wan 2.1 VAE), loaded from disk.

Wan encodes 1 + 4k frames into 1 + k latents with 8x spatial compression and 16 channels; its config
carries per-channel ``latents_mean`` / ``latents_std`` and the latents the DiT sees are
(z - mean) / std (the Wan pipeline decodes with z * std + mean). Compression factors are read from the
architecture (``temperal_downsample``, the number of levels, ``patch_size``), not from the defaults.

Maths: docs/maths.md sections 16 and 17.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae.interface import VideoAutoencoder


class WanVAE(nn.Module, VideoAutoencoder):
    """Adapter: ``WanVAE.from_pretrained(dir)`` where ``dir`` holds an ``AutoencoderKLWan``."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.temporal_compression = 2 ** sum(bool(t) for t in cfg.temperal_downsample)
        self.spatial_compression = 2 ** len(cfg.temperal_downsample) * int(cfg.patch_size or 1)
        if cfg.latents_mean is None or cfg.latents_std is None:
            raise PyramidflowError("this AutoencoderKLWan config has no latents_mean/latents_std")

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype | None = None) -> WanVAE:
        from diffusers import AutoencoderKLWan

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no AutoencoderKLWan config.json in {path}")
        kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        return cls(AutoencoderKLWan.from_pretrained(path, **kwargs)).eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def set_latent_stats(self, mean, std) -> None:
        """Store per-channel normalisation in the AutoencoderKLWan config (saved with it)."""
        self.vae.register_to_config(latents_mean=[float(m) for m in mean],
                                    latents_std=[float(s) for s in std])

    def save_pretrained(self, path, **kwargs) -> None:
        """A genuine diffusers ``AutoencoderKLWan`` folder."""
        self.vae.save_pretrained(path, **kwargs)

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction, mean, logvar) with a reparameterised sample."""
        mean, logvar = self.encode_moments(video)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        return self.decode_unclamped(z), mean, logvar

    def decode_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output before diffusers' final clamp to [-1, 1], for training.

        ``AutoencoderKLWan.decode`` clamps its output; a clamped pixel passes no gradient, so a young
        decoder that overshoots everywhere (the usual start) is stuck there. The per-frame outputs of
        ``vae.decoder`` are recorded by a forward hook during the ordinary ``decode`` and joined in
        time order, so the frame loop and its causal cache stay diffusers' own.
        (B, C, T, h, w) latents -> (B, 3, T', H, W), equal to ``decode`` wherever it is in range.
        """
        if self.vae.config.patch_size is not None:
            raise PyramidflowError("unclamped decoding supports Wan 2.1 VAEs (no patch_size) only")
        if self.vae.use_tiling:
            raise PyramidflowError("unclamped decoding decodes whole frames: disable VAE tiling to train")
        outputs: list[torch.Tensor] = []
        handle = self.vae.decoder.register_forward_hook(lambda _m, _i, out: outputs.append(out))
        try:
            self.vae.decode(z.to(self.vae.dtype))
        finally:
            handle.remove()
        return torch.cat(outputs, dim=2)

    def latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        return torch.tensor(cfg.latents_mean, dtype=torch.float64), torch.tensor(
            cfg.latents_std, dtype=torch.float64
        )

    def encode_moments(self, video, chunk_latents=None):
        # diffusers already encodes frame 0 then groups of 4 with its own causal cache.
        dist = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        return dist.mean, dist.logvar

    def decode_raw(self, z, chunk_latents=None):
        # diffusers decodes one latent frame at a time with a causal feature cache, so memory is
        # already independent of the clip length; ``chunk_latents`` needs no extra work here.
        return self.vae.decode(z.to(self.vae.dtype)).sample
