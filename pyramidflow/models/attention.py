"""Attention for the pyramid transformer: Wan's projections, block-causal and packed layouts.

Who may attend to whom is described by token ids (docs/maths.md section 7): a query of sample s and
unit u sees a key of the same sample whose unit is <= u (block-causal over units, bidirectional
inside a unit). An :class:`AttentionLayout` turns the ids into the cheapest exact plan, once per
forward pass, shared by every layer:

* ``"full"``: every query sees every key: one SDPA call with no mask (fast kernels apply);
* ``"groups"``: one sample, tokens sorted by unit: each run of queries sees one contiguous key
  range, so attention is a few unmasked SDPA calls and no O(L^2) mask is ever built;
* ``"padded"``: several packed samples, each contiguous: they are scattered into a padded batch
  (samples, longest, ...) and attend in one SDPA call with a per-sample block-causal mask, so the
  cost is samples x longest^2 and the backward pass stays linear in the tokens (slicing every group
  out of one long sequence would make it O(groups x tokens));
* ``"dense"``: anything else: a boolean (Sq, Sk) mask, or a FlexAttention block mask on CUDA.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.linear import Linear
from pyramidflow.models.rope import rotate

BACKENDS = ("auto", "sdpa", "flex")


class AttentionLayout:
    """The attention pattern between query ids and key ids.

    q_sample, q_unit: (Sq,) integer ids; k_sample, k_unit: (Sk,). Keys with a unit of
    ``-2**62`` (text) are visible to every query of their sample.
    """

    def __init__(self, q_sample: Tensor, q_unit: Tensor, k_sample: Tensor, k_unit: Tensor) -> None:
        self.q_sample, self.q_unit = q_sample.long(), q_unit.long()
        self.k_sample, self.k_unit = k_sample.long(), k_unit.long()
        self._dense: Tensor | None = None
        self._block_mask = None
        self.kind, self.groups = self._plan()
        self.padding: Padding | None = None
        if self.kind == "groups" and Padding.applies(self.q_sample, self.k_sample):
            self.kind, self.padding = "padded", Padding(self)

    def allowed_rows(self, q_index: Tensor) -> Tensor:
        """(len(q_index), Sk) bool: which keys the given queries may attend to."""
        same = self.q_sample[q_index, None] == self.k_sample[None, :]
        return same & (self.k_unit[None, :] <= self.q_unit[q_index, None])

    def _plan(self) -> tuple[str, list[tuple[int, int, int, int]]]:
        sq = self.q_sample.numel()
        ids = torch.stack((self.q_sample, self.q_unit))
        change = (ids[:, 1:] != ids[:, :-1]).any(0).nonzero().flatten() + 1
        starts = [0, *change.tolist()]
        ends = [*starts[1:], sq]
        rows = self.allowed_rows(torch.tensor(starts, dtype=torch.long, device=self.q_sample.device))
        groups = []
        for qs, qe, row in zip(starts, ends, rows, strict=True):
            keys = row.nonzero().flatten()
            if keys.numel() == 0:
                raise PyramidflowError(f"queries {qs}..{qe - 1} may attend to no key: "
                                       "every token needs its own unit")
            ks, ke = int(keys[0]), int(keys[-1]) + 1
            if keys.numel() != ke - ks:
                return "dense", []
            groups.append((qs, qe, ks, ke))
        if len(groups) == 1 and groups[0][2:] == (0, self.k_sample.numel()):
            return "full", groups
        return "groups", groups

    def dense_mask(self) -> Tensor:
        """(Sq, Sk) bool mask, built on first use."""
        if self._dense is None:
            self._dense = self.allowed_rows(torch.arange(self.q_sample.numel(), device=self.q_sample.device))
        return self._dense

    def block_mask(self):
        """FlexAttention block mask for the same pattern, built on first use."""
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            qs, qu, ks, ku = self.q_sample, self.q_unit, self.k_sample, self.k_unit

            def mask_mod(b, h, q, k):
                return (qs[q] == ks[k]) & (ku[k] <= qu[q])

            self._block_mask = create_block_mask(
                mask_mod, None, None, qs.numel(), ks.numel(), device=qs.device
            )
        return self._block_mask


class Padding:
    """Scatter plan of the ``"padded"`` layout: packed tokens <-> a (samples, longest) batch."""

    @staticmethod
    def applies(q_sample: Tensor, k_sample: Tensor) -> bool:
        """Several samples, each a contiguous run of queries and of keys, in the same order."""
        def runs(ids: Tensor) -> Tensor:
            return torch.unique_consecutive(ids)

        rq, rk = runs(q_sample), runs(k_sample)
        return rq.numel() > 1 and rq.numel() == q_sample.unique().numel() and torch.equal(rq, rk)

    def __init__(self, layout: AttentionLayout) -> None:
        q_ids, q_counts = torch.unique_consecutive(layout.q_sample, return_counts=True)
        _, k_counts = torch.unique_consecutive(layout.k_sample, return_counts=True)
        self.n, self.lq, self.lk = q_ids.numel(), int(q_counts.max()), int(k_counts.max())
        self.q_index = self._positions(q_counts, self.lq)  # (Sq,) into the flat (n * lq)
        self.k_index = self._positions(k_counts, self.lk)
        dev = layout.q_unit.device
        q_unit = torch.full((self.n * self.lq,), -1, dtype=torch.long, device=dev)
        k_unit = torch.full((self.n * self.lk,), 2**62, dtype=torch.long, device=dev)  # padding: hidden
        q_unit[self.q_index], k_unit[self.k_index] = layout.q_unit, layout.k_unit
        q_unit, k_unit = q_unit.view(self.n, self.lq, 1), k_unit.view(self.n, 1, self.lk)
        mask = k_unit <= q_unit  # (n, lq, lk)
        mask[:, :, 0] |= q_unit[:, :, 0] < 0  # padded query rows see one key (their output is dropped)
        self.mask = mask[:, None]  # (n, 1, lq, lk)

    @staticmethod
    def _positions(counts: Tensor, longest: int) -> Tensor:
        starts = torch.arange(counts.numel(), device=counts.device) * longest
        sample = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
        offset = torch.arange(int(counts.sum()), device=counts.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts)
        return starts[sample] + offset

    def scatter(self, x: Tensor, index: Tensor, longest: int) -> Tensor:
        """(B, H, S, D) -> (B * n, H, longest, D), zeros where a sample is shorter."""
        b, h, _, d = x.shape
        flat = x.new_zeros(b, h, self.n * longest, d).index_copy(2, index, x)
        return flat.view(b, h, self.n, longest, d).transpose(1, 2).reshape(b * self.n, h, longest, d)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, h, _, d = q.shape
        mask = self.mask.repeat(b, 1, 1, 1) if b > 1 else self.mask
        out = F.scaled_dot_product_attention(self.scatter(q, self.q_index, self.lq),
                                             self.scatter(k, self.k_index, self.lk),
                                             self.scatter(v, self.k_index, self.lk), attn_mask=mask)
        out = out.view(b, self.n, h, self.lq, d).transpose(1, 2).reshape(b, h, self.n * self.lq, d)
        return out.index_select(2, self.q_index)


@cache
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def _flex_compiles(q: Tensor) -> bool:
    """Whether compiled FlexAttention serves q (B, H, S, D): CUDA, and D >= 16 (its kernels' minimum)."""
    return q.is_cuda and q.shape[-1] >= 16


def attend(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout | None, backend: str = "auto") -> Tensor:
    """Scaled dot-product attention. q: (B, Sq, H, D); k, v: (B, Sk, H, D) -> (B, Sq, H, D)."""
    if backend not in BACKENDS:
        raise PyramidflowError(f"unknown attention backend {backend!r}: "
                               f"valid backends are {', '.join(BACKENDS)}")
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, S, D)
    if layout is None or layout.kind == "full":
        out = F.scaled_dot_product_attention(q, k, v)
    elif backend == "flex" or (backend == "auto" and layout.kind == "dense" and _flex_compiles(q)):
        with warnings.catch_warnings():  # eager FlexAttention (CPU) warns that it is not compiled
            warnings.simplefilter("ignore", UserWarning)
            out = _flex_fn(_flex_compiles(q))(q, k, v, block_mask=layout.block_mask())
    elif layout.kind == "padded":
        out = layout.padding.attend(q, k, v)
    elif layout.kind == "groups":
        out = torch.cat(
            [F.scaled_dot_product_attention(q[:, :, qs:qe], k[:, :, ks:ke], v[:, :, ks:ke])
             for qs, qe, ks, ke in layout.groups],
            dim=2,
        )
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.dense_mask())
    return out.transpose(1, 2)


def _inference_f32_cpu(x: Tensor, *params: Tensor) -> bool:
    """True when x is a float32 CPU tensor and autograd records nothing about x or ``params``."""
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    return not grad and x.dtype == torch.float32 and x.device.type == "cpu"


def _rms_norm(norm: nn.RMSNorm, x: Tensor) -> Tensor:
    """``norm(x)``. On the CPU at inference: one fused reduction (vector norm) and one product
    scaled in place, instead of PyTorch's composite kernel and its two full-size temporaries."""
    if norm.weight is None or not _inference_f32_cpu(x, norm.weight):
        return norm(x)
    eps = torch.finfo(x.dtype).eps if norm.eps is None else norm.eps
    inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    return torch.mul(x, inv).mul_(norm.weight)


def _rotate_temporary(x: Tensor, rot: Tensor) -> Tensor:
    """``rotate(x, rot)`` for an x that is this module's own temporary: in place when autograd allows."""
    if _inference_f32_cpu(x) and x.is_contiguous():
        torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(rot)
        return x
    return rotate(x, rot)


class Attention(nn.Module):
    """Wan's attention: q/k/v projections, RMS norm of q and k across all heads, output projection.

    Parameter names match diffusers' ``WanAttention`` (``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
    ``norm_q``, ``norm_k``). Self-attention applies rotary embedding to q and k; cross-attention
    (``context`` given) does not.
    """

    def __init__(self, dim: int, heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % heads:
            raise PyramidflowError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = Linear(dim, dim)
        self.to_k = Linear(dim, dim)
        self.to_v = Linear(dim, dim)
        self.to_out = nn.ModuleList([Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def query(self, x: Tensor, rope: Tensor | None) -> Tensor:
        """(B, S, dim) -> (B, S, heads, head_dim), normed and rotated by ``rope``."""
        q = _rms_norm(self.norm_q, self.to_q(x)).unflatten(2, (self.heads, -1))
        return q if rope is None else _rotate_temporary(q, rope)

    def key_value(self, x: Tensor, rope: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, S, dim) -> keys and values (B, S, heads, head_dim); keys normed and rotated."""
        k = _rms_norm(self.norm_k, self.to_k(x)).unflatten(2, (self.heads, -1))
        v = self.to_v(x).unflatten(2, (self.heads, -1))
        return (k if rope is None else _rotate_temporary(k, rope)), v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        rope: Tensor | None = None,
        layout: AttentionLayout | None = None,
        past: tuple[Tensor, Tensor] | None = None,
        backend: str = "auto",
        context_kv: tuple[Tensor, Tensor] | None = None,
        exchange=None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (B, S, dim). Self-attention if ``context`` and ``context_kv`` are None, else cross-attention.

        ``rope``: complex rotations of x's tokens (:func:`pyramidflow.models.rope.rotation`).

        ``past``: cached keys and values (B, N, heads, head_dim) placed before x's own (history).
        ``context_kv``: the context's keys and values (B, L, heads, head_dim) as :meth:`key_value`
        computed them (the text cache); ``context`` is then not needed.
        ``exchange``: under sequence parallelism (:class:`pyramidflow.models.parallel.UlyssesExchange`)
        x is this process's token shard; self-attention then runs on the whole sequence for this
        process's heads, and the keys/values returned (and ``past``) are (B, N, heads / processes, head_dim).
        Returns the output (B, S, dim) and x's (or the context's) own keys and values.
        """
        q = self.query(x, rope)
        if context_kv is not None:
            k, v = context_kv
        else:
            k, v = self.key_value(x if context is None else context, rope if context is None else None)
        shard = exchange is not None and context is None and context_kv is None
        if shard:  # sequence shard, all heads -> whole sequence, this process's heads
            q, k, v = exchange.to_heads(q), exchange.to_heads(k), exchange.to_heads(v)
            own = (exchange.real(k), exchange.real(v))
        else:
            own = (k, v)
        if past is not None:
            if past[0].shape[2] != k.shape[2]:
                raise PyramidflowError(f"history cache holds {past[0].shape[2]} heads per process, this "
                                       f"call {k.shape[2]}: rebuild it under the same parallel setting")
            k, v = torch.cat((past[0], k), dim=1), torch.cat((past[1], v), dim=1)
        out = attend(q, k, v, layout, backend)
        if shard:
            out = exchange.to_tokens(out)
        out = out.flatten(2).type_as(q)
        return self.to_out[1](self.to_out[0](out)), own
