"""Spatial tiling with linearly blended seams (decode large frames tile by tile).

The latent plane is cut into overlapping tiles; each is mapped (decoded) on its own and the results
are combined as a weighted average whose weights ramp linearly across the middle half of each overlap
(zero on its outer quarter). Weights are normalised per pixel, so for a local map whose receptive
field reaches at most a quarter of the overlap, tiled == whole exactly; for decoders with per-frame
normalisation or wide receptive fields it is an approximation that improves with tile and overlap.

Maths: docs/maths.md section 17.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyramidflow.errors import PyramidflowError


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, size) with tiles of ``tile`` overlapping by at least ``overlap``."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, left: int, right: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1-D blend weights of a tile: 1 inside, 0 -> 1 across the middle half of a ``left``-pixel overlap
    at the start and 1 -> 0 across the middle half of a ``right``-pixel overlap at the end.

    The outer quarter of each overlap gets weight 0 (that is where a tile's own border padding
    contaminates it), and two complementary ramps sum to exactly 1 across a shared overlap.
    """
    i = torch.arange(length, dtype=dtype, device=device) + 0.5
    w = torch.ones(length, dtype=dtype, device=device)
    if left:
        w = torch.minimum(w, ((i - left / 4) / (left / 2)).clamp(0, 1))
    if right:
        w = torch.minimum(w, ((length - i - right / 4) / (right / 2)).clamp(0, 1))
    return w


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    tile: int,
    overlap: int,
    scale: int,
) -> torch.Tensor:
    """Apply ``fn`` ((B, C, T, h, w) -> (B, C', T', h*scale, w*scale)) tile by tile and blend."""
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise PyramidflowError(f"tiling needs tile > overlap >= 0, got tile={tile}, overlap={overlap}")
    h, w = z.shape[-2:]
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weight = None
    for r in rows:
        for c in cols:
            piece = fn(z[..., r : r + tile, c : c + tile])  # (B, C', T', th*scale, tw*scale)
            if out is None:
                shape = (*piece.shape[:3], h * scale, w * scale)
                out = piece.new_zeros(shape)
                weight = piece.new_zeros((1, 1, 1, h * scale, w * scale))
            th, tw = piece.shape[-2:]
            ov = overlap * scale
            wy = _ramp(th, ov if r > 0 else 0, ov if r + tile < h else 0, piece.dtype, piece.device)
            wx = _ramp(tw, ov if c > 0 else 0, ov if c + tile < w else 0, piece.dtype, piece.device)
            wmap = (wy[:, None] * wx[None, :]).view(1, 1, 1, th, tw)
            ys, xs = r * scale, c * scale
            out[..., ys : ys + th, xs : xs + tw] += piece * wmap
            weight[..., ys : ys + th, xs : xs + tw] += wmap
    return out / weight
