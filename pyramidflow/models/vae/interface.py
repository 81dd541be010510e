"""One interface over every video autoencoder the project uses.

``encode(video)`` takes (B, 3, F, H, W) in [-1, 1] with F = 1 + k * temporal_compression and returns
*normalised* latents (B, C, 1 + k, H / s, W / s): per channel, z_norm = (z - mean_c) / std_c, so the
flow-matching maths of docs/maths.md (sigma=1 noise, sigma=0 data) sees roughly unit-variance data.
``decode`` undoes the normalisation and maps back to [-1, 1] video. Long clips can be decoded chunk by
chunk (``chunk_latents``) and large frames tile by tile with blended seams (``tile_latent``), so memory
does not grow with the clip. ``encode``/``decode`` run without autograd (inference and caching);
training calls the model's ``forward``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae.tiling import tiled_apply


class VideoAutoencoder(ABC):
    """Mixin: implementations provide the raw moments/decoder and the four attributes below."""

    latent_channels: int
    temporal_compression: int
    spatial_compression: int

    # ---- implemented by subclasses -------------------------------------------------------------
    @abstractmethod
    def encode_moments(
        self, video: torch.Tensor, chunk_latents: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (un-normalised) posterior mean and log-variance, each (B, C, T, h, w)."""

    @abstractmethod
    def decode_raw(self, z: torch.Tensor, chunk_latents: int | None = None) -> torch.Tensor:
        """Raw latents (B, C, T, h, w) -> video (B, 3, 1 + (T-1)*tc, h*s, w*s)."""

    @abstractmethod
    def latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std), each (C,)."""

    # ---- shared logic ------------------------------------------------------------------------
    def valid_frame_counts(self, up_to: int = 64) -> list[int]:
        tc = self.temporal_compression
        return [1 + k * tc for k in range(0, (up_to - 1) // tc + 1)]

    def check_frames(self, frames: int) -> None:
        tc = self.temporal_compression
        if frames < 1 or (frames - 1) % tc:
            shown = ", ".join(str(f) for f in self.valid_frame_counts(max(frames, 1) + 2 * tc))
            raise PyramidflowError(
                f"a clip of {frames} frames does not fit this VAE: frames must be 1 + k*{tc} "
                f"(valid: {shown}, ...)"
            )

    def check_size(self, height: int, width: int) -> None:
        s = self.spatial_compression
        if height % s or width % s or height <= 0 or width <= 0:
            raise PyramidflowError(
                f"frame size {height}x{width} does not fit this VAE: height and width must be "
                f"positive multiples of {s}"
            )

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, h, w) of the latents of a (frames, height, width) clip."""
        self.check_frames(frames)
        self.check_size(height, width)
        s = self.spatial_compression
        return (self.latent_channels, 1 + (frames - 1) // self.temporal_compression, height // s, width // s)

    def video_shape(self, latent_frames: int, h: int, w: int) -> tuple[int, int, int]:
        """(frames, height, width) decoded from latents with (latent_frames, h, w)."""
        s = self.spatial_compression
        return (1 + (latent_frames - 1) * self.temporal_compression, h * s, w * s)

    def _stats_like(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.latent_stats()
        shape = (1, -1, 1, 1, 1)
        return mean.to(z).view(shape), std.to(z).view(shape)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats_like(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats_like(z)
        return z * std + mean

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise PyramidflowError(
                f"video must be (B, 3, F, H, W) in [-1, 1], got shape {tuple(video.shape)}"
            )
        self.check_frames(video.shape[2])
        self.check_size(video.shape[3], video.shape[4])

    @torch.no_grad()
    def encode(
        self,
        video: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        chunk_latents: int | None = None,
    ) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> normalised latents (B, C, T, h, w).

        ``sample=False`` returns the posterior mean (deterministic, what a latent cache stores).
        """
        self._check_video(video)
        mean, logvar = self.encode_moments(video, chunk_latents=chunk_latents)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.normalize(z)

    @torch.no_grad()
    def decode(
        self,
        latents: torch.Tensor,
        chunk_latents: int | None = None,
        tile_latent: int | None = None,
        tile_overlap: int = 2,
    ) -> torch.Tensor:
        """Normalised latents (B, C, T, h, w) -> video (B, 3, F, H, W) in about [-1, 1].

        ``chunk_latents``: decode this many latent frames at a time with a causal feature cache
        (exact). ``tile_latent``: decode spatial tiles of this many latent pixels, overlapping by
        ``tile_overlap``, blended linearly across seams (approximate where the decoder normalises
        over the whole frame).
        """
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise PyramidflowError(
                f"latents must be (B, {self.latent_channels}, T, h, w), got shape {tuple(latents.shape)}"
            )
        z = self.denormalize(latents)
        if tile_latent is None:
            return self.decode_raw(z, chunk_latents=chunk_latents)
        return tiled_apply(
            lambda tile: self.decode_raw(tile, chunk_latents=chunk_latents),
            z,
            tile=tile_latent,
            overlap=tile_overlap,
            scale=self.spatial_compression,
        )
