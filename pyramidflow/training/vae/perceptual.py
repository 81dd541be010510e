"""Perceptual loss from a vision model the user supplies as a local directory (nothing is fetched).

Any ``transformers`` vision backbone saved with ``save_pretrained`` works (ViT, DINOv2, CLIP vision,
ConvNeXt ...): frames are resized to the model's image size, normalised with its processor's mean and
std (``preprocessor_config.json``, else ImageNet's), and the loss is the mean squared distance between
the channel-normalised hidden states of every layer (an LPIPS-like feature distance without learned
per-channel weights). The backbone is frozen.

Maths: docs/maths.md section 18.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pyramidflow.errors import PyramidflowError

_IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class FeaturePerceptualLoss(nn.Module):
    def __init__(self, model_dir: str | Path, max_frames: int = 4) -> None:
        super().__init__()
        from transformers import AutoModel

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"perceptual model directory has no config.json: {model_dir}")
        try:
            self.net = AutoModel.from_pretrained(model_dir).eval().requires_grad_(False)
        except (ValueError, OSError) as err:
            raise PyramidflowError(f"cannot load a vision model from {model_dir}: {err}") from err
        mean, std = _IMAGENET
        proc = model_dir / "preprocessor_config.json"
        if proc.is_file():
            data = json.loads(proc.read_text())
            mean, std = data.get("image_mean", mean), data.get("image_std", std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        cfg = getattr(self.net.config, "vision_config", self.net.config)
        self.size = getattr(cfg, "image_size", None)
        self.max_frames = max_frames

    def _features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        x = (frames + 1) / 2  # [-1, 1] -> [0, 1], not clamped (to_unit would stop gradients outside)
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean.to(x)) / self.std.to(x)
        out = self.net(pixel_values=x, output_hidden_states=True)
        return [h / (h.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-6) for h in out.hidden_states]

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Videos (B, 3, F, H, W) in [-1, 1]; uses up to ``max_frames`` evenly spaced frames."""
        idx = torch.linspace(0, recon.shape[2] - 1, min(self.max_frames, recon.shape[2])).round().long()
        a = rearrange(recon[:, :, idx], "b c f h w -> (b f) c h w")
        b = rearrange(target[:, :, idx], "b c f h w -> (b f) c h w")
        fa, fb = self._features(a), self._features(b.detach())
        return sum((x - y).pow(2).mean() for x, y in zip(fa, fb, strict=True)) / len(fa)
