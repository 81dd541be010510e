"""A 3D patch discriminator for adversarial VAE training (PatchGAN, Isola et al. 2017, in 3D).

Each output logit judges one space-time patch of the video; with hinge losses it sharpens
reconstructions once the autoencoder has warmed up. Input (B, 3, F, H, W) in [-1, 1], output
(B, 1, F', H / 2^n, W / 2^n) logits.

Maths: docs/maths.md section 18.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PatchDiscriminator3D(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channels: int = 3, channels: int = 32, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, channels, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)),
            nn.LeakyReLU(0.2),
        ]
        ch = channels
        for i in range(1, num_layers):
            out = channels * min(2**i, 8)
            layers += [
                nn.Conv3d(ch, out, (3, 4, 4), stride=(2 if i == 1 else 1, 2, 2), padding=(1, 1, 1)),
                nn.GroupNorm(min(32, out // 4), out),
                nn.LeakyReLU(0.2),
            ]
            ch = out
        layers.append(nn.Conv3d(ch, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)
