"""The temporal pyramid of autoregressive generation (docs/maths.md section 7, Pyramid Flow section 3.3).

Video is generated one unit (a few latent frames) at a time. While stage i of the current unit is
denoised, the history is compressed: the most recent unit at stage i's level, the one before one
level lower, and so on, older units at the lowest level:

    level(d) = min(L_i + d - 1, K - 1)     for the unit d steps back (d = 1 is the most recent).

Positions: the current unit sits on the integer grid of its own stage (extrapolated); a history
unit at a lower level is placed on that grid at fractional positions, the centres of its blocks
(interpolated). History is corrupted with noise of level U(0, corrupt_max) in training and kept
clean at inference; training may also move each history unit by a small random translation
(``history_shift``, docs/maths.md section 7), so that the model does not copy its history's errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.transforms import HaarTransform


def unit_probabilities(num_units: int, rule: str = "uniform") -> Tensor:
    """Probability of each unit being the current one in a training example (docs/maths.md section 7).

    ``uniform``: 1 / N each. ``variable_length``: the clip is cut to a length L ~ U{1..N} and every
    unit of it counts, so unit u has weight P(L > u) and

        P(u) = (N - u) / (N (N + 1) / 2),                                    (7.3)

    twice the uniform weight for the first unit, which alone learns to start the motion from the
    prompt. (N,) float64.
    """
    if num_units < 1:
        raise PyramidflowError(f"num_units must be >= 1, got {num_units}")
    if rule == "uniform":
        return torch.full((num_units,), 1.0 / num_units, dtype=torch.float64)
    if rule == "variable_length":
        weights = torch.arange(num_units, 0, -1, dtype=torch.float64)
        return weights / (num_units * (num_units + 1) / 2)
    raise PyramidflowError(f"unknown unit draw {rule!r}; valid: uniform, variable_length")


def draw_unit(num_units: int, rule: str, generator: torch.Generator) -> int:
    """One unit index drawn by :func:`unit_probabilities` (one draw from ``generator``)."""
    if num_units == 1:
        return 0
    if rule == "uniform":  # kept as one randint so that uniform draws match earlier versions
        return int(torch.randint(num_units, (), generator=generator))
    return int(torch.multinomial(unit_probabilities(num_units, rule), 1, generator=generator))


def history_levels(num_history: int, stage: int, num_stages: int) -> list[int]:
    """Levels below full resolution of the history units, oldest first (length ``num_history``)."""
    if num_history < 0:
        raise PyramidflowError(f"num_history must be >= 0, got {num_history}")
    if not 0 <= stage < num_stages:
        raise PyramidflowError(f"stage {stage} is out of range: valid stages are 0..{num_stages - 1}")
    current = num_stages - 1 - stage
    return [min(current + d - 1, num_stages - 1) for d in range(num_history, 0, -1)]


def block_centres(size: int, level_offset: int) -> Tensor:
    """Positions, on a grid ``2**level_offset`` times finer, of the centres of ``size`` cells.

    Cell j covers fine cells [j*f, (j+1)*f), so its centre is (j + 0.5) f - 0.5; with
    ``level_offset = 0`` this is the integer grid 0..size-1. (size,) float64.
    """
    if level_offset < 0:
        raise PyramidflowError(f"level_offset must be >= 0, got {level_offset}")
    f = float(2**level_offset)
    return (torch.arange(size, dtype=torch.float64) + 0.5) * f - 0.5


@dataclass(frozen=True)
class Segment:
    """One piece of the token sequence: a unit at some level, placed on the current grid."""

    unit: int  # unit index in the video (0 = first unit); attention is causal over units
    level: int  # levels below full resolution
    is_history: bool


def unit_layout(unit: int, stage: int, num_stages: int) -> list[Segment]:
    """History units 0..unit-1 (compressed) then the current unit at stage ``stage``."""
    levels = history_levels(unit, stage, num_stages)
    segs = [Segment(u, lv, True) for u, lv in enumerate(levels)]
    segs.append(Segment(unit, num_stages - 1 - stage, False))
    return segs


def corrupt(x: Tensor, level: Tensor | float, generator=None) -> Tensor:
    """x -> (1 - s) x + s eps, eps ~ N(0, I) from ``generator``; ``level`` a number or per example (B,)."""
    if isinstance(level, Tensor) and level.dim() > 0:
        level = level.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (1 - level) * x + level * eps


def translate(x: Tensor, dy: float, dx: float) -> Tensor:
    """x (B, C, F, H, W) moved by (dy, dx) pixels (down, right), sub-pixel by bicubic interpolation,
    the border pixels repeated outside the frame (docs/maths.md (7.4)); integer moves copy pixels
    (to rounding)."""
    if x.dim() != 5:
        raise PyramidflowError(f"translate needs (B, C, F, H, W), got {tuple(x.shape)}")
    b, c, f, h, w = x.shape
    flat = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (B F, C, H, W)
    dtype = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
    theta = torch.tensor([[1.0, 0.0, -2.0 * dx / w], [0.0, 1.0, -2.0 * dy / h]], dtype=dtype, device=x.device)
    grid = torch.nn.functional.affine_grid(theta.expand(b * f, 2, 3), [b * f, c, h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(flat.to(dtype), grid, mode="bicubic", padding_mode="border",
                                          align_corners=False)  # (B F, C, H, W)
    return out.to(x.dtype).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def corrupt_history(history: Tensor, corrupt_max: float = 1 / 3, generator=None) -> tuple[Tensor, Tensor]:
    """Training-time corruption x -> (1 - s) x + s eps with s ~ U(0, corrupt_max) per example.

    history: (B, ...). Returns (corrupted, s (B,)). One s per example, shared by all its units.
    """
    if not 0.0 <= corrupt_max <= 1.0:
        raise PyramidflowError(f"corrupt_max must lie in [0, 1], got {corrupt_max}")
    b = history.shape[0]
    s = corrupt_max * torch.rand(b, generator=generator, device=history.device, dtype=torch.float64)
    return corrupt(history, s, generator), s


def tokens_per_level(latent_hw: Sequence[int], patch_hw: Sequence[int], frames_per_unit: int,
                     num_stages: int) -> list[int]:
    """Tokens of one unit at each level 0..K-1 (spatial pyramid; time is not compressed here)."""
    h, w = (int(v) for v in latent_hw)
    ph, pw = (int(v) for v in patch_hw)
    out = []
    for level in range(num_stages):
        f = 2**level
        if h % (f * ph) or w % (f * pw):
            raise PyramidflowError(
                f"latent {h}x{w} cannot be halved {level} times and patchified by {ph}x{pw}: "
                f"height and width must be multiples of {f * ph} and {f * pw}"
            )
        out.append(frames_per_unit * (h // f // ph) * (w // f // pw))
    return out


def sequence_tokens(unit: int, stage: int, per_level: Sequence[int]) -> int:
    """Video tokens attended to while denoising ``unit`` at ``stage`` (history + current)."""
    k = len(per_level)
    return sum(per_level[s.level] for s in unit_layout(unit, stage, k))


def max_training_tokens(num_units: int, per_level: Sequence[int]) -> int:
    """The largest sequence of any (unit, stage) training sample of a ``num_units`` video."""
    k = len(per_level)
    return max(sequence_tokens(u, s, per_level) for u in range(num_units) for s in range(k))


@dataclass(frozen=True)
class HistoryUnit:
    """One compressed history unit handed to the velocity of the current unit."""

    latent: Tensor  # (B, C, F, H / 2^level, W / 2^level)
    level: int  # levels below full resolution
    unit: int  # index of the unit in the video


def history_window(num_units: int, max_history: int | None) -> range:
    """Indices of the units kept as history by unit ``num_units``: the last ``max_history`` (all if None).

    With a window the attended temporal distance, and so the cost of a unit, stops growing once
    ``max_history`` units exist; positions are relative (RoPE), so a model trained on clips longer
    than its window sees nothing new at any later unit.
    """
    if max_history is not None and max_history < 0:
        raise PyramidflowError(f"max_history must be >= 0 (or None for all), got {max_history}")
    start = 0 if max_history is None else max(0, num_units - max_history)
    return range(start, num_units)


def compress_history(units: Sequence[Tensor], stage: int, num_stages: int, transform: HaarTransform,
                     max_history: int | None = None) -> list[HistoryUnit]:
    """The history seen at ``stage`` by the unit after ``units`` (each (B, C, F, H, W), full res).

    Only the last ``max_history`` units are kept (:func:`history_window`); unit indices stay absolute.
    """
    kept = history_window(len(units), max_history)
    levels = history_levels(len(kept), stage, num_stages)
    return [HistoryUnit(transform.down(units[i], lv), lv, i) for i, lv in zip(kept, levels, strict=True)]


def split_units(x: Tensor, frames_per_unit: int) -> list[Tensor]:
    """(B, C, T, H, W) -> T / frames_per_unit units of (B, C, frames_per_unit, H, W)."""
    if frames_per_unit < 1:
        raise PyramidflowError(f"frames_per_unit must be >= 1, got {frames_per_unit}")
    frames = x.shape[2]
    if frames % frames_per_unit:
        fits = ", ".join(str(frames_per_unit * k) for k in range(1, 5))
        raise PyramidflowError(f"{frames} frames do not split into units of {frames_per_unit}: "
                               f"the frame count must be a multiple of {frames_per_unit} ({fits}, ...)")
    return list(x.split(frames_per_unit, dim=2))
