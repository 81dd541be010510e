"""Pixel space as an autoencoder: the identity behind the :class:`VideoAutoencoder` interface.

A pixel-space model sees the video itself, in [-1, 1] with channels first: (B, 3, T, H, W). Making
that an autoencoder with compression 1, three channels and unit statistics lets pipelines and
trainers treat pixels and VAE latents the same way (no ``vae is None`` branches).

Also here: the one conversion between the [0, 1] frames that files, datasets and users handle,
(B, T, 3, H, W), and the model range [-1, 1], (B, 3, T, H, W).

Maths: docs/maths.md section 17.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyramidflow.models.vae.interface import VideoAutoencoder


def to_signed(x: Tensor) -> Tensor:
    """Values in [0, 1] -> [-1, 1] (any shape)."""
    return x * 2.0 - 1.0


def to_unit(x: Tensor) -> Tensor:
    """Values in about [-1, 1] -> [0, 1], clamped (any shape; float32)."""
    return x.float().clamp(-1.0, 1.0).add(1.0).div(2.0)


def frames_to_model(video: Tensor) -> Tensor:
    """(B, T, 3, H, W) in [0, 1] -> (B, 3, T, H, W) in [-1, 1]."""
    return to_signed(video.permute(0, 2, 1, 3, 4))


def model_to_frames(x: Tensor) -> Tensor:
    """(B, 3, T, H, W) in about [-1, 1] -> (B, T, 3, H, W) in [0, 1] (float32)."""
    return to_unit(x).permute(0, 2, 1, 3, 4)


class PixelSpace(nn.Module, VideoAutoencoder):
    """The identity autoencoder: 3 channels, no compression, latents = the video in [-1, 1]."""

    latent_channels = 3
    temporal_compression = 1
    spatial_compression = 1

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def latent_stats(self) -> tuple[Tensor, Tensor]:
        return torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def encode_moments(self, video: Tensor, chunk_latents: int | None = None) -> tuple[Tensor, Tensor]:
        return video, torch.full_like(video, -torch.inf)  # a point mass: variance 0

    def decode_raw(self, z: Tensor, chunk_latents: int | None = None) -> Tensor:
        return z

    def normalize(self, z: Tensor) -> Tensor:
        return z

    def denormalize(self, z: Tensor) -> Tensor:
        return z
