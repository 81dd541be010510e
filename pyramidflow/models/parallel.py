"""Sequence-parallel (Ulysses) inference of :class:`PyramidDiT` over several processes.

The engine is diffusers' context-parallel machinery: a ``ContextParallelConfig`` (and its device mesh),
the model's ``_cp_plan`` applied by diffusers' hooks, which cut the token sequence into one shard per
process and gather the output, and diffusers' Ulysses all-to-all (``SeqAllToAllDim``) inside every
self-attention. What stays ours is the attention itself: PyramidDiT plans block-causal attention from
token ids (:class:`pyramidflow.models.attention.AttentionLayout`: units, samples, history), which
diffusers' ``dispatch_attention_fn`` cannot express, so a layer runs (docs/maths.md section 13)::

    x shard (B, S/N, dim) -> q, k, v (B, S/N, H, D)          projections, norms, RoPE of own tokens
        -> all-to-all -> (B, S, H/N, D)                      the whole sequence, H/N heads
        -> [history keys (B, Nh, H/N, D)] + own keys          (history cache, already head-sharded)
        -> exact masked attention of pyramidflow (same layout as one process, all tokens)
        -> all-to-all -> (B, S/N, H, D) -> output projection of own tokens

Cross-attention needs no exchange: the text is not sharded, each process attends its own queries to
all text keys. Everything else (modulation, norms, FFN) acts token by token on the shard.

* Split points: ``token_split`` (an identity module of the transformer) returns the patchified tokens
  (B, S, dim), their rotations (1, S, 1, D/2) and their timestep entries (S,); the plan
  :data:`ULYSSES_PLAN` makes diffusers split these outputs along the tokens. ``proj_out``'s output
  is gathered back (B, S, C * patch volume) on every process. Fractional RoPE positions
  (docs/maths.md section 14) are computed for the whole sequence and split with the tokens, so each
  token keeps its exact position; the attention layout (block causality over units, section 7) is
  planned from the whole sequence's ids, since every process attends over all tokens.
* Lengths: the sequence must split evenly over N processes; it is padded at its end with at most
  N - 1 tokens (:func:`pad_tokens`) whose unit is larger than every real one. Real queries never
  see them (block causality), they are dropped from the history cache and from the output, so the
  result is that of one process.
* Heads: Ulysses gives every process H / N whole heads; H must be divisible by N (one-line error).
* History cache (docs/maths.md section 7): built under the same parallel setting, it holds each
  process's heads for all history tokens (B, Nh, H/N, D); a cache of another setting is refused.
* Ring attention (diffusers' other context-parallel mode) exchanges key/value chunks and merges
  partial results with their log-sum-exp, which only GPU flash/cuDNN kernels return, and it cannot
  carry PyramidDiT's block-causal masks; it is not offered here.

Results equal one process's up to float rounding: the same attention is computed on the same
numbers, but per-head and per-shard kernels may sum in a different order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from diffusers.hooks.context_parallel import apply_context_parallel
from diffusers.models._modeling_parallel import (
    ContextParallelConfig,
    ContextParallelInput,
    ContextParallelOutput,
    ParallelConfig,
)
from diffusers.models.attention_dispatch import SeqAllToAllDim
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh

from pyramidflow.errors import PyramidflowError

PAD_UNIT = 2**62 - 1  # unit of padding tokens: after every real unit, so no real query sees them

ULYSSES_PLAN = {
    "token_split": {
        0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True),  # tokens (B, S, dim)
        1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),  # rope (1, S, 1, D/2)
        2: ContextParallelInput(split_dim=0, expected_dims=1, split_output=True),  # entries (S,)
    },
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


class TokenSplit(nn.Module):
    """The identity on (tokens, rotations, timestep entries); under sequence parallelism diffusers'
    hooks (:data:`ULYSSES_PLAN`) replace its outputs with this process's shard of each."""

    def forward(self, x: Tensor, rope: Tensor, entries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return x, rope, entries


def ulysses_config(model: nn.Module) -> ContextParallelConfig | None:
    """The model's context-parallel config when Ulysses is enabled on it, else None."""
    config = getattr(model, "_parallel_config", None)
    return None if config is None else config.context_parallel_config


def enable_ulysses(model: nn.Module) -> ParallelConfig | None:
    """Shard ``model``'s token sequence over all processes of the default group (Ulysses attention).

    Call it on every process (a collective: it builds a device mesh), after
    ``torch.distributed.init_process_group`` and after moving the model to its device. With one
    process it does nothing and returns None.

    It performs what diffusers' ``ModelMixin.enable_parallelism`` does for a model without diffusers
    attention processors: build the (ring=1, ulysses=N) mesh, ``ParallelConfig.setup`` it, record it
    as ``model._parallel_config`` and let ``apply_context_parallel`` install the split/gather hooks
    of ``model._cp_plan``. ``enable_parallelism`` itself is not called because it picks the device
    as ``rank % torch.accelerator.device_count()``, which divides by zero on a machine without an
    accelerator (CPU processes over gloo); here the device and the mesh's device type are the
    model's own, so the same code serves CPU (gloo) and GPU (NCCL) processes.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise PyramidflowError("Ulysses sequence parallelism needs torch.distributed initialised: "
                               "launch with torchrun --nproc_per_node N")
    world = dist.get_world_size()
    heads = model.config.num_attention_heads
    if heads % world:
        raise PyramidflowError(f"Ulysses splits the {heads} attention heads over {world} processes: "
                               f"use a number of processes that divides {heads}")
    if getattr(model, "_parallel_config", None) is not None:
        raise PyramidflowError("parallelism is already enabled on this model")
    if world == 1:
        return None
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (1, world), mesh_dim_names=("ring", "ulysses"))
    config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=world, mesh=mesh))
    config.setup(dist.get_rank(), world, device, mesh=mesh)
    model._parallel_config = config
    apply_context_parallel(model, config.context_parallel_config, model._cp_plan)
    return config


class UlyssesExchange:
    """The all-to-all exchanges of one forward pass (diffusers' ``SeqAllToAllDim``).

    ``tokens``: the real (unpadded) length of the whole sequence; keys and values kept for a history
    cache are cut to it.
    """

    def __init__(self, config: ContextParallelConfig, tokens: int) -> None:
        self.group = config._ulysses_mesh.get_group()
        self.degree = config.ulysses_degree
        self.tokens = tokens

    def to_heads(self, x: Tensor) -> Tensor:
        """(B, S/N, H, D) sequence shard -> (B, S, H/N, D): the whole sequence, this process's heads."""
        return SeqAllToAllDim.apply(self.group, x.contiguous(), 2, 1)

    def to_tokens(self, x: Tensor) -> Tensor:
        """(B, S, H/N, D) -> (B, S/N, H, D): back to this process's tokens, all heads."""
        return SeqAllToAllDim.apply(self.group, x.contiguous(), 1, 2)

    def real(self, x: Tensor) -> Tensor:
        """(B, S, ...) -> (B, tokens, ...): without the padding."""
        return x[:, : self.tokens]


def token_entries(num_entries: int, tokens: int, repeats: list[int] | None, device) -> Tensor:
    """(S,) long: the timestep entry of every token (``repeats`` tokens per entry, or one entry for
    all tokens, or one per token)."""
    if num_entries == 1:
        return torch.zeros(tokens, dtype=torch.long, device=device)
    if num_entries == tokens:
        return torch.arange(tokens, device=device)
    counts = torch.tensor(repeats, device=device)
    return torch.repeat_interleave(torch.arange(num_entries, device=device), counts)


def pad_tokens(degree: int, x: Tensor, rope: Tensor, units: Tensor, samples: Tensor, entries: Tensor):
    """Pad the sequence at its end to a multiple of ``degree`` tokens.

    x (B, S, dim) with zeros, rope (1, S, 1, D/2) with the identity rotation, units with
    :data:`PAD_UNIT`, samples and timestep entries with the last token's. Returns the five padded
    tensors and the number of tokens added (0 to degree - 1).
    """
    pad = (-x.shape[1]) % degree
    if pad == 0:
        return x, rope, units, samples, entries, 0
    x = torch.cat((x, x.new_zeros(x.shape[0], pad, x.shape[2])), 1)
    rope = torch.cat((rope, rope.new_ones(rope.shape[0], pad, *rope.shape[2:])), 1)
    units = torch.cat((units, units.new_full((pad,), PAD_UNIT)))
    samples = torch.cat((samples, samples[-1:].expand(pad)))
    entries = torch.cat((entries, entries[-1:].expand(pad)))
    return x, rope, units, samples, entries, pad


def local_tables(entries: Tensor, *tables: Tensor) -> tuple[list[Tensor], list[int] | None]:
    """The modulation tables (B, M, ...) cut to the entries of this shard's tokens ``entries`` (S_local,),
    and the shard's repeats (None when one entry covers the shard or each token has its own)."""
    first, last = int(entries[0]), int(entries[-1])
    counts = torch.unique_consecutive(entries, return_counts=True)[1].tolist()
    m = last - first + 1
    repeats = None if m == 1 or m == entries.numel() else counts
    return [t[:, first:last + 1] for t in tables], repeats
