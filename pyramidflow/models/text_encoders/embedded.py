"""The embedded text encoder: a small transformer trained jointly with the DiT on the captions.

Word-level vocabulary from the dataset (:class:`WordTokenizer`), learned token and position
embeddings, a few pre-norm transformer layers, zero-padded output (``base`` module contract).
The vocabulary is saved next to the weights (``vocab.json``) by ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.text_encoders.base import TextEncoderMixin
from pyramidflow.models.text_encoders.word_tokenizer import WordTokenizer

VOCAB_FILE = "vocab.json"


class EmbeddedTextEncoder(ModelMixin, ConfigMixin, TextEncoderMixin):
    """prompts -> (B, max_length, dim) embeddings and (B, max_length) mask; trainable."""

    @register_to_config
    def __init__(self, vocab_size: int, dim: int = 256, num_layers: int = 2, num_heads: int = 4,
                 ffn_mult: int = 4, max_length: int = 64) -> None:
        super().__init__()
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, ffn_mult * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.tokenizer: WordTokenizer | None = None

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_vocab: int = 10000, min_count: int = 1,
                      **config) -> EmbeddedTextEncoder:
        """A fresh encoder whose vocabulary is built from ``captions``."""
        tokenizer = WordTokenizer.build(captions, max_vocab, min_count)
        model = cls(vocab_size=len(tokenizer), **config)
        model.tokenizer = tokenizer
        return model

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if self.tokenizer is None:
            raise PyramidflowError("this encoder has no vocabulary: build it with from_captions or load it")
        ids, mask = self.tokenizer(list(prompts), self.max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        h = self.token_embedding(ids) + self.position_embedding  # (B, L, dim)
        h = self.norm(self.layers(h, src_key_padding_mask=~mask))
        return h * mask[..., None], mask

    def split_vocabulary(self, prompt: str) -> tuple[list[str], list[str]]:
        """The prompt's words this encoder knows and those it reads as ``<unk>``."""
        if self.tokenizer is None:
            raise PyramidflowError("this encoder has no vocabulary: build it with from_captions or load it")
        return self.tokenizer.split(prompt)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        if self.tokenizer is None:
            raise PyramidflowError("cannot save an encoder without its vocabulary")
        super().save_pretrained(save_directory, *args, **kwargs)
        self.tokenizer.save(Path(save_directory) / VOCAB_FILE)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> EmbeddedTextEncoder:
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model.tokenizer = WordTokenizer.load(Path(pretrained_model_name_or_path) / VOCAB_FILE)
        if len(model.tokenizer) != model.config.vocab_size:
            raise PyramidflowError(f"vocab.json has {len(model.tokenizer)} words but the model expects "
                                   f"{model.config.vocab_size}")
        return model
