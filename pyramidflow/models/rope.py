"""Rotary position embedding on arbitrary (t, h, w) coordinates (docs/maths.md section 7).

Wan splits each attention head's channels into three groups, one per axis: h and w get
``2 * (head_dim // 6)`` channels each and t gets the rest. Channel pair j of a group rotates by
``position * theta ** (-2j / group_dim)``. diffusers' ``WanRotaryPosEmbed`` reads these angles from a
table of integer positions; here positions are any float64 coordinates, so a lower-resolution stage
or a compressed history unit can sit at fractional positions on the full-resolution grid. Integer
positions give bit-identical angles to the table (both are computed in float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

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


def rotation(cos: Tensor, sin: Tensor) -> Tensor:
    """cos, sin (B or 1, S, head_dim / 2) -> complex64 ``cos + i sin`` of shape (B or 1, S, 1, head_dim / 2).

    Built once per forward pass and shared by every layer (:func:`rotate`).
    """
    return torch.complex(cos.float(), sin.float()).unsqueeze(-2)


def rotate(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate interleaved channel pairs (x[2j], x[2j+1]) of x: (B, S, heads, head_dim) by ``rot``.

    Each pair is read as the complex number x[2j] + i x[2j+1] and multiplied by ``rot`` (from
    :func:`rotation`): one contiguous complex multiply with the arithmetic of the real formula
    (x1 cos - x2 sin, x1 sin + x2 cos), instead of four strided products. Computed in float32 and
    cast back to x's dtype; differentiable.
    """
    pairs = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rot).flatten(-2).type_as(x)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved channel pairs (x[2j], x[2j+1]) of x: (B, S, heads, head_dim).

    cos, sin: (B or 1, S, head_dim / 2). Computed in float32 and cast back to x's dtype.
    """
    return rotate(x, rotation(cos, sin))


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


_MEMO_LIMIT = 2**20  # complex entries (8 MiB) above which a table is rebuilt rather than kept


@lru_cache(maxsize=32)
def _grid_rotation(size: tuple[int, ...], offset: tuple[float, ...], scale: tuple[float, ...], head_dim: int,
                   theta: float, device: torch.device) -> Tensor:
    # a plain (not inference-mode) tensor, so a table first built under inference_mode serves training too
    with torch.inference_mode(False), torch.no_grad():
        return rotation(*grid_rotary(size, offset, scale, head_dim, theta, device))


def grid_rotation(
    size: Sequence[int],
    offset: Sequence[float],
    scale: Sequence[float],
    head_dim: int,
    theta: float = 10000.0,
    device=None,
) -> Tensor:
    """``rotation(*grid_rotary(...))``: (f * h * w, 1, head_dim / 2) complex64.

    A sampler asks for the same few grids at every denoising step, so tables of up to 2**20 entries
    (8 MiB) are memoised, at most 32 of them; larger grids, where the network's cost dwarfs the
    table's, are rebuilt each time. The result may be shared: do not modify it in place.
    """
    key = (tuple(int(n) for n in size), tuple(float(o) for o in offset), tuple(float(s) for s in scale),
           int(head_dim), float(theta), torch.device(device or "cpu"))
    if math.prod(key[0]) * (head_dim // 2) > _MEMO_LIMIT:
        return _grid_rotation.__wrapped__(*key)
    return _grid_rotation(*key)
