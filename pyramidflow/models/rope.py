"""Rotary position embedding on arbitrary (t, h, w) coordinates (MATH.md section 7).

Wan splits each attention head's channels into three groups, one per axis: h and w get
``2 * (head_dim // 6)`` channels each and t gets the rest. Channel pair j of a group rotates by
``position * theta ** (-2j / group_dim)``. diffusers' ``WanRotaryPosEmbed`` reads these angles from a
table of integer positions; here positions are any float64 coordinates, so a lower-resolution stage
or a compressed history unit can sit at fractional positions on the full-resolution grid. Integer
positions give bit-identical angles to the table (both are computed in float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of a head given to the (t, h, w) axes, as in Wan."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def inverse_frequencies(head_dim: int, theta: float, device=None) -> tuple[Tensor, Tensor]:
    """(head_dim / 2,) float64 frequencies and the axis (0, 1, 2) each channel pair rotates with."""
    freqs, axes = [], []
    for axis, dim in enumerate(axis_dims(head_dim)):
        exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim
        freqs.append(1.0 / (theta**exponent))
        axes.append(torch.full((dim // 2,), axis, dtype=torch.long, device=device))
    return torch.cat(freqs), torch.cat(axes)


def rotary_angles(positions: Tensor, head_dim: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation of each channel pair.

    positions: (..., S, 3) coordinates (t, h, w), any real values. Returns two float32 tensors of
    shape (..., S, head_dim / 2).
    """
    if head_dim % 2:
        raise PyramidflowError(f"head dimension must be even for rotary embedding, got {head_dim}")
    freqs, axes = inverse_frequencies(head_dim, theta, positions.device)
    angles = positions.to(torch.float64)[..., axes] * freqs  # (..., S, head_dim / 2)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved channel pairs (x[2j], x[2j+1]) of x: (B, S, heads, head_dim).

    cos, sin: (B or 1, S, head_dim / 2). Computed in float32 and cast back to x's dtype.
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, S, heads, head_dim / 2) each
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    if torch.is_grad_enabled() and x.requires_grad:
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2).type_as(x)
    out = torch.empty(x.shape, dtype=torch.result_type(x, cos), device=x.device)
    pairs = out.unflatten(-1, (-1, 2))  # inference: write the pairs in place, no stacking copy
    torch.sub(x1 * cos, x2 * sin, out=pairs[..., 0])
    torch.add(x1 * sin, x2 * cos, out=pairs[..., 1])
    return out.type_as(x)


def grid_positions(
    size: Sequence[int],
    offset: Sequence[float] = (0.0, 0.0, 0.0),
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    device=None,
) -> Tensor:
    """Coordinates of an (f, h, w) token grid: ``offset + scale * index`` per axis.

    Returns (f * h * w, 3) float64 in the row-major token order of a patchified latent. With the
    defaults this is Wan's integer grid.
    """
    axes = [
        float(o) + float(s) * torch.arange(int(n), dtype=torch.float64, device=device)
        for n, o, s in zip(size, offset, scale, strict=True)
    ]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, 3)


def grid_rotary(
    size: Sequence[int],
    offset: Sequence[float],
    scale: Sequence[float],
    head_dim: int,
    theta: float = 10000.0,
    device=None,
) -> tuple[Tensor, Tensor]:
    """``rotary_angles(grid_positions(size, offset, scale), ...)`` computed per axis.

    Only f + h + w coordinates are distinct, so cos/sin are evaluated per axis (as Wan's table
    does) and broadcast to the (f * h * w, head_dim / 2) grid; the result is bit-identical.
    """
    if head_dim % 2:
        raise PyramidflowError(f"head dimension must be even for rotary embedding, got {head_dim}")
    freqs, axes = inverse_frequencies(head_dim, theta, device)
    n = [int(v) for v in size]
    cos_parts, sin_parts = [], []
    for axis in range(3):
        index = torch.arange(n[axis], dtype=torch.float64, device=device)
        coords = float(offset[axis]) + float(scale[axis]) * index
        angles = coords[:, None] * freqs[axes == axis]  # (n_axis, pairs of this axis)
        shape = [1, 1, 1, angles.shape[1]]
        shape[axis] = n[axis]
        target = (*n, angles.shape[1])
        cos_parts.append(angles.cos().float().view(shape).expand(target))
        sin_parts.append(angles.sin().float().view(shape).expand(target))
    half = head_dim // 2
    return torch.cat(cos_parts, -1).reshape(-1, half), torch.cat(sin_parts, -1).reshape(-1, half)
