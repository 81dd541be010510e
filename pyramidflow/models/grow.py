"""Depth growth: a trained transformer with new blocks that start as the identity.

A block adds three residual branches to its input (self-attention, cross-attention, FFN; each ends
in a linear layer). With those three output projections at zero a new block leaves every token
unchanged, so the grown model computes exactly what the trained one did, and training starts from
it with more capacity (docs/maths.md section 13, "Growing a trained model"). The new blocks are
spread evenly between the trained ones; their other weights keep their fresh initialisation, and
gradients reach them as soon as the output projections move off zero.
"""

from __future__ import annotations

import torch
from torch import nn

from pyramidflow.errors import PyramidflowError


def new_block_slots(num_layers: int, count: int) -> list[int]:
    """Indices, in the grown stack of ``num_layers + count`` blocks, of the new ones.

    New block k (0-based) follows the first ``ceil((k + 1) num_layers / count)`` trained blocks: 4
    trained + 2 new -> T T N T T N, ``count == num_layers`` alternates T N T N..., and the first block
    is always a trained one.
    """
    if num_layers < 1:
        raise PyramidflowError(f"a transformer to grow needs at least one block, got {num_layers}")
    if count < 0:
        raise PyramidflowError(f"the number of new blocks must be >= 0, got {count}")
    after = [-(-(k + 1) * num_layers // count) for k in range(count)]  # trained blocks before new block k
    return [a + k for k, a in enumerate(after)]


def zero_block_outputs(block: nn.Module) -> None:
    """Set the output projections of a block's three residual branches to zero (identity block)."""
    for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
        nn.init.zeros_(linear.weight)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


def grow_depth(model: nn.Module, count: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` (a PyramidDiT or subclass) with ``count`` identity blocks inserted.

    Same class, configuration, device and dtype except ``num_layers``; the trained blocks keep their
    weights and order; the new blocks are initialised under ``torch.manual_seed(seed)`` (the global
    generator is restored afterwards), their output projections zero. ``count == 0`` returns ``model``.
    """
    if count == 0:
        return model
    old = model.config.num_layers
    slots = set(new_block_slots(old, count))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = type(model).from_config({**model.config, "num_layers": old + count})
    first = next(model.parameters())
    grown.to(device=first.device, dtype=first.dtype)
    outside = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    missing, unexpected = grown.load_state_dict(outside, strict=False)
    if unexpected or any(not k.startswith("blocks.") for k in missing):
        raise PyramidflowError(f"growing the transformer left weights unmatched: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
    trained = iter(model.blocks)
    for index, block in enumerate(grown.blocks):
        if index in slots:
            zero_block_outputs(block)
        else:
            block.load_state_dict(next(trained).state_dict())  # strict: same block shape
    return grown
