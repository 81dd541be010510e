"""``Linear``: ``nn.Linear`` with a faster product for few rows and large weights on the CPU.

``F.linear(x, W, b)`` computes ``x W^T`` (rows of x against the transposed weight). On the CPUs this
project was measured on (PyTorch 2.13 with MKL, AVX2; docs/BENCHMARKS.md, "Few-row products") the
same product written the other way round, ``(W x^T)^T`` with ``addmm``, was 1.2-2x faster when x has
few rows and W is large: the coarse stages of a large transformer (20-320 tokens against 1536-wide
layers) are exactly that case, while the small layers and many rows of small models were slower
that way. So the other order is used only on the CPU, in float32, for at most ``FEW_ROWS`` rows and
at least ``LARGE_WEIGHT`` weights; everywhere else this is ``nn.Linear``. The two orders give the
same product up to float32 rounding (the sums run in another order); parameter names and state
dicts are ``nn.Linear``'s, so diffusers' Wan weights and peft's LoRA layers see no difference.
``PYRAMIDFLOW_FEW_ROW_LINEAR=0`` turns it off.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_ROWS = 320  # at most this many rows (tokens x batch)
LARGE_WEIGHT = 1536 * 1536  # at least this many weights (in x out features)
ENABLED = os.environ.get("PYRAMIDFLOW_FEW_ROW_LINEAR", "1") != "0"


def few_row_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether :class:`Linear` computes ``(W x^T)^T`` for this input (module docstring)."""
    return (ENABLED and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.numel() >= LARGE_WEIGHT and x.numel() // x.shape[-1] <= FEW_ROWS
            and not torch.is_grad_enabled())


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters) with the few-row product of the module docstring."""

    def forward(self, x: Tensor) -> Tensor:
        if not few_row_product(x, self.weight, self.bias):
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])  # (N, in)
        if self.bias is None:
            out = self.weight @ rows.T  # (out, N)
        else:
            out = torch.addmm(self.bias[:, None], self.weight, rows.T)
        return out.T.reshape(*x.shape[:-1], self.out_features)
