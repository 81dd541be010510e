"""Tiny components for trainer tests: a Wan transformer, a hashing text encoder, a dataset."""

from __future__ import annotations

import hashlib

import torch
from diffusers import ConfigMixin, ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import register_to_config

WORDS = ["red", "blue", "green", "circle", "square", "moving", "left", "right", "up", "down"]


class HashTextEncoder(ModelMixin, ConfigMixin):
    """Words -> a trainable embedding table by a stable hash; empty prompt -> zeros."""

    @register_to_config
    def __init__(self, vocab: int = 64, dim: int = 8, length: int = 4, seed: int = 0):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, dim)
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(vocab, dim, generator=torch.Generator().manual_seed(seed)))

    def forward(self, prompts: list[str]) -> torch.Tensor:
        cfg = self.config
        ids = torch.zeros(len(prompts), cfg.length, dtype=torch.long)
        mask = torch.zeros(len(prompts), cfg.length, 1)
        for i, text in enumerate(prompts):
            for j, word in enumerate(text.split()[: cfg.length]):
                ids[i, j] = 1 + int(hashlib.md5(word.encode()).hexdigest(), 16) % (cfg.vocab - 1)
                mask[i, j] = 1.0
        return self.table(ids.to(self.table.weight.device)) * mask.to(self.table.weight.device)


class TinyVideos(torch.utils.data.Dataset):
    def __init__(self, n: int = 12, frames: int = 2, size: int = 8, nan_at: int | None = None):
        gen = torch.Generator().manual_seed(0)
        self.videos = torch.rand(n, frames, 3, size, size, generator=gen)
        self.texts = [" ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(3)) for i in range(n)]
        self.nan_at = nan_at

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        video = self.videos[i].clone()
        if self.nan_at is not None and i == self.nan_at:
            video[0, 0, 0, 0] = float("nan")
        return {"video": video, "text": self.texts[i]}


def tiny_wan(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
        text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    )


def flow_trainer(model, text, data, out, loop, optim=None, temporal=None, accelerator=None):
    """A :class:`Trainer` running flow matching on ``model`` with a trained hashing text encoder."""
    from pyramidflow.training.methods.flow import FlowMatching
    from pyramidflow.training.trainer import Trainer

    method = FlowMatching(model, text, optim=optim, temporal=temporal, train_text_encoder=True,
                          text_dropout=loop.text_dropout)
    return Trainer(method, data, loop, out, accelerator=accelerator)


TINY_DIT = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2)  # a small PyramidDiT


def seeded_randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
