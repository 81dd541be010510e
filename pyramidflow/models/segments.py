"""Inputs of the token-level API: segments of a sequence, their modulation, the history cache.

A sequence is a list of :class:`TokenSegment`: the current stage's latent and the compressed
history units (MATH.md section 7), each with its own timestep, its unit index (attention is
block-causal over units) and its place on a common reference grid (fractional rotary positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError

TEXT_UNIT = -(2**62)  # unit id of text keys: visible to every query of their sample


@dataclass
class TokenSegment:
    """One piece of a token sequence.

    latent: (B, C, F, H, W) at the segment's own resolution.
    timestep: a number, (B,), or (B, tokens) per token; 1000 * sigma (MATH.md section 1).
    offset, scale: the (t, h, w) coordinate of token (i, j, k) on the reference grid is
    ``offset + scale * (i, j, k)`` (in tokens of the reference grid, fractional allowed).
    unit: index of the unit in the video; a token never attends to a later unit.
    """

    latent: Tensor
    timestep: Tensor | float
    offset: Sequence[float] = (0.0, 0.0, 0.0)
    scale: Sequence[float] = (1.0, 1.0, 1.0)
    unit: int = 0

    @classmethod
    def at_level(cls, latent: Tensor, timestep: Tensor | float, unit: int = 0, levels_coarser: int = 0,
                 frame_offset: float = 0.0) -> TokenSegment:
        """A segment ``levels_coarser`` spatial levels below the reference grid, starting at ``frame_offset``.

        Its tokens sit at the centres of the blocks they cover (``pyramid.temporal.block_centres``):
        spacing f = 2**levels_coarser, first position (f - 1) / 2. ``levels_coarser=0`` is the
        integer grid.
        """
        if levels_coarser < 0:
            raise PyramidflowError(f"levels_coarser must be >= 0, got {levels_coarser}")
        f = float(2**levels_coarser)
        return cls(latent, timestep, (float(frame_offset), (f - 1) / 2, (f - 1) / 2), (1.0, f, f), unit)


class Modulation:
    """Per-segment (or per-token) modulation vectors, expanded to tokens on demand.

    table: (B, M, k, dim) for M timestep entries; repeats: (M,) tokens covered by each entry,
    or None when M is 1 (broadcast) or one entry per token.
    """

    def __init__(self, table: Tensor, repeats: Tensor | None) -> None:
        self.table, self.repeats = table, repeats

    def vectors(self, base: Tensor) -> list[Tensor]:
        """base (1, k, dim) + table -> k tensors (B, S or 1, dim) in float32."""
        full = base.unsqueeze(0).float() + self.table.float()  # (B, M, k, dim)
        if self.repeats is not None:
            return [torch.repeat_interleave(v, self.repeats, dim=1) for v in full.unbind(2)]
        return list(full.unbind(2))


@dataclass
class HistoryCache:
    """Per-layer self-attention keys and values of history tokens (MATH.md section 7).

    History tokens carry their own fixed timestep and, by block causality, never see the current
    unit, so their keys and values do not change while the current unit is denoised: they are
    computed once per stage (:meth:`PyramidDiT.build_history_cache`) and reused at every step.
    keys, values: one (B, N, heads, head_dim) tensor per layer. units: (N,) unit of each token.
    The cache belongs to the text it was built with (same batch, same prompts).
    """

    keys: list[Tensor]
    values: list[Tensor]
    units: Tensor
    text_shape: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return int(self.units.numel())

    def check(self, batch: int, text: Tensor, current_units: Tensor) -> None:
        """Raise ValueError unless the cache fits this call."""
        if tuple(text.shape) != self.text_shape:
            raise PyramidflowError(f"history cache was built with text of shape {self.text_shape}, "
                             f"got {tuple(text.shape)}: rebuild it for these prompts")
        if self.keys and self.keys[0].shape[0] != batch:
            raise PyramidflowError(f"history cache has batch {self.keys[0].shape[0]}, got {batch}")
        if self.num_tokens and int(current_units.min()) <= int(self.units.max()):
            raise PyramidflowError("cached history must belong to earlier units than every current segment "
                             f"(history units up to {int(self.units.max())}, "
                             f"current from {int(current_units.min())})")
