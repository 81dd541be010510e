"""The text-encoder interface and classifier-free dropout.

Every encoder maps ``prompts: list[str]`` to ``(embeddings (B, L, D), mask (B, L))`` with Wan's
contract: each prompt is cut to its true token length and zero-padded to ``max_length`` (the
transformer attends to the whole padded sequence, as Wan does). An empty prompt is a prompt like
any other: it encodes to the encoder's own representation of "" (for T5/UMT5 the end-of-sequence
token alone, for the embedded encoder a learned ``<null>`` token), which is the unconditional
embedding of classifier-free guidance.

Maths: docs/maths.md sections 10 and 13.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise PyramidflowError(f"dropout probability must lie in [0, 1], got {p}")


def dropout_draw(n: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """(n,) bool: which of n examples lose their prompt (probability p, from ``generator``)."""
    _check_p(p)
    return torch.rand(n, generator=generator) < p


def drop_prompts(prompts: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Classifier-free dropout on prompts: each is replaced by "" with probability p."""
    drop = dropout_draw(len(prompts), p, generator)
    return ["" if d else str(s) for s, d in zip(prompts, drop.tolist(), strict=True)]


def drop_embeddings(embeddings: Tensor, mask: Tensor, null_embedding: Tensor, null_mask: Tensor, p: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Classifier-free dropout on precomputed embeddings (e.g. read from a latent cache).

    embeddings (B, L, D), mask (B, L); null_embedding (1, L, D) / null_mask (1, L): the encoding of
    "". Returns the new embeddings, mask and the (B,) bool draw.
    """
    drop = dropout_draw(embeddings.shape[0], p, generator).to(embeddings.device)
    if null_embedding.shape[1:] != embeddings.shape[1:]:
        raise PyramidflowError(f"null embedding shape {tuple(null_embedding.shape)} does not match "
                               f"embeddings {tuple(embeddings.shape)}")
    emb = torch.where(drop[:, None, None], null_embedding.to(embeddings), embeddings)
    return emb, torch.where(drop[:, None], null_mask.to(mask), mask), drop


def pad_embeddings(rows: Sequence[Tensor], max_length: int) -> tuple[Tensor, Tensor]:
    """Per-prompt embeddings (L_i, D) -> zero-padded (B, max_length, D) and bool mask (B, max_length)."""
    dim = rows[0].shape[-1]
    out = rows[0].new_zeros(len(rows), max_length, dim)
    mask = torch.zeros(len(rows), max_length, dtype=torch.bool, device=rows[0].device)
    for i, row in enumerate(rows):
        n = min(row.shape[0], max_length)
        out[i, :n], mask[i, :n] = row[:n], True
    return out, mask


class TextEncoderMixin(ABC):
    """Shared behaviour of text encoders; subclasses implement ``encode`` and set ``max_length``."""

    max_length: int

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(B, max_length, D) embeddings and (B, max_length) bool mask of real tokens."""

    def null_embedding(self) -> tuple[Tensor, Tensor]:
        """The encoding of the empty prompt: (1, max_length, D) and (1, max_length)."""
        return self.encode([""])

    def encode_with_dropout(self, prompts: Sequence[str], p: float, generator: torch.Generator | None = None
                            ) -> tuple[Tensor, Tensor]:
        """``encode`` after classifier-free dropout of the prompts (probability p)."""
        return self.encode(drop_prompts(prompts, p, generator))
