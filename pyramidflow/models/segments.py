"""Inputs of the token-level API: segments of a sequence, their modulation, the history and text caches.

A sequence is a list of :class:`TokenSegment`: the current stage's latent and the compressed
history units (docs/maths.md section 7), each with its own timestep, its unit index (attention is
block-causal over units) and its place on a common reference grid (fractional rotary positions).
Keys and values that stay fixed during sampling are computed once: the history's self-attention
(:class:`HistoryCache`) and the text's cross-attention (:class:`TextCache`), docs/maths.md section 13.
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
    timestep: a number, (B,), or (B, tokens) per token; 1000 * sigma (docs/maths.md section 1).
    offset, scale: the (t, h, w) coordinate of token (i, j, k) on the reference grid is
    ``offset + scale * (i, j, k)`` (in tokens of the reference grid, fractional allowed).
    unit: index of the unit in the video; a token never attends to a later unit.
    patch_level: the patch level of a patchification pyramid (:class:`pyramidflow.models.ppf.PPFDiT`,
    docs/maths.md section 9), coarse to fine; None: the model's own patch size. A larger patch's token
    sits at the centre of the tokens of the model's own patch it covers (:meth:`placement`).
    """

    latent: Tensor
    timestep: Tensor | float
    offset: Sequence[float] = (0.0, 0.0, 0.0)
    scale: Sequence[float] = (1.0, 1.0, 1.0)
    unit: int = 0
    patch_level: int | None = None

    def placement(self, ratio: Sequence[int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(offset, scale) on the reference grid of tokens that each cover ``ratio`` (t, h, w) tokens of
        the segment's own grid: token i sits at the centre ``r i + (r - 1) / 2`` of the tokens it covers.
        ``ratio`` (1, 1, 1) gives ``offset`` and ``scale`` unchanged."""
        offset = tuple(float(o) + float(s) * (r - 1) / 2 for o, s, r in zip(self.offset, self.scale, ratio,
                                                                              strict=True))
        return offset, tuple(float(s) * r for s, r in zip(self.scale, ratio, strict=True))

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
    """Per-segment (or per-token) modulation vectors, applied without expanding them to tokens.

    table: (B, M, k, dim) for M timestep entries; repeats: tokens covered by each entry (M ints), or
    None when M is 1 (broadcast) or one entry per token. With repeats, the sequence is cut into runs
    of tokens that share one entry (a segment with one timestep) or have one entry each (per-token
    timesteps), and each run is modulated with its broadcast (or aligned) slice of the table:
    nothing of size (B, S, dim) is built per modulation vector.
    """

    def __init__(self, table: Tensor, repeats: Sequence[int] | Tensor | None) -> None:
        self.table = table
        self.repeats = None if repeats is None else [int(r) for r in repeats]
        self.runs = None if repeats is None else _runs(self.repeats)
        self._index: Tensor | None = None

    def vectors(self, base: Tensor) -> list[Tensor]:
        """base (1, k, dim) + table -> k float32 tensors (B, M, dim): one vector per entry."""
        return list((base.unsqueeze(0).float() + self.table.float()).unbind(2))

    def apply(self, fn, tokens: Sequence[Tensor], vectors: Sequence[Tensor]) -> Tensor:
        """``fn(*tokens, *vectors)`` with each vector (B, M, dim) matched to its tokens (B, S, ...).

        Without runs the vectors broadcast (M = 1) or align (M = S) with the tokens as they are;
        otherwise fn runs once per run and the results are joined along the tokens. fn must act on
        every token independently (norms, modulation, gated residuals).
        """
        if self.runs is None:
            return fn(*tokens, *vectors)
        if len(self.runs) > MAX_RUNS or torch.is_grad_enabled():
            # many runs (packed batches) or training: expand the vectors to the tokens once; slicing
            # runs out of the sequence would cost O(runs x tokens) in the backward pass
            if self._index is None:
                reps = torch.tensor(self.repeats, device=self.table.device)
                entries = torch.arange(len(self.repeats), device=reps.device)
                self._index = torch.repeat_interleave(entries, reps)
            return fn(*tokens, *(v.index_select(1, self._index) for v in vectors))
        parts = [fn(*(x[:, t0:t1] for x in tokens), *(v[:, e0:e1] for v in vectors))
                 for t0, t1, e0, e1 in self.runs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


MAX_RUNS = 8  # above this many runs, vectors are expanded to tokens (one fused call, not one per run)


def _runs(repeats: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(token start, token end, entry start, entry end) of each run; entries covering one token each merge."""
    runs: list[list[int]] = []
    t = 0
    for e, r in enumerate(repeats):
        if r < 1:
            raise PyramidflowError(f"every timestep entry must cover at least one token, got {r}")
        if r == 1 and runs and runs[-1][3] - runs[-1][2] == runs[-1][1] - runs[-1][0] and runs[-1][1] == t:
            runs[-1][1], runs[-1][3] = t + 1, e + 1  # extend a run of per-token entries
        else:
            runs.append([t, t + r, e, e + 1])
        t += r
    return [tuple(r) for r in runs]


@dataclass
class HistoryCache:
    """Per-layer self-attention keys and values of history tokens (docs/maths.md section 7).

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

    def check(self, batch: int, text_shape: tuple[int, ...], current_units: Tensor) -> None:
        """Raise ValueError unless the cache fits this call (text of shape ``text_shape``)."""
        if tuple(text_shape) != self.text_shape:
            raise PyramidflowError(f"history cache was built with text of shape {self.text_shape}, "
                             f"got {tuple(text_shape)}: rebuild it for these prompts")
        if self.keys and self.keys[0].shape[0] != batch:
            raise PyramidflowError(f"history cache has batch {self.keys[0].shape[0]}, got {batch}")
        if self.num_tokens and int(current_units.min()) <= int(self.units.max()):
            raise PyramidflowError("cached history must belong to earlier units than every current segment "
                             f"(history units up to {int(self.units.max())}, "
                             f"current from {int(current_units.min())})")


@dataclass
class TextCache:
    """Per-layer cross-attention keys and values of one batch of prompts (docs/maths.md section 13).

    The text embedding and each block's ``to_k``/``norm_k`` and ``to_v`` of the text depend on the
    prompts only, never on the latent or the timestep, so they are computed once per sampling call
    (:meth:`PyramidDiT.build_text_cache`) and reused by every step, stage and unit; the outputs are
    those of recomputing them. keys, values: one (B, L, heads, head_dim) tensor per layer;
    text_shape: (B, L, text_dim) of the encoder hidden states; dtype: theirs (the model computes its
    time embedding in it). For classifier-free guidance build it from the doubled batch
    ``cat([null, cond])``.
    """

    keys: list[Tensor]
    values: list[Tensor]
    text_shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def batch(self) -> int:
        return int(self.text_shape[0])

    def check(self, batch: int, num_layers: int, text: Tensor | None) -> None:
        """Raise ValueError unless the cache fits a call with ``batch`` samples and (optional) ``text``."""
        if len(self.keys) != num_layers:
            raise PyramidflowError(f"text cache has {len(self.keys)} layers, the model {num_layers}: "
                                   "build it with this model")
        if batch != self.batch:
            raise PyramidflowError(f"text cache has batch {self.batch}, got {batch}: "
                                   "build it for these prompts")
        if text is not None and tuple(text.shape) != self.text_shape:
            raise PyramidflowError(f"text cache was built from text of shape {self.text_shape}, "
                                   f"got {tuple(text.shape)}: rebuild it for these prompts")
