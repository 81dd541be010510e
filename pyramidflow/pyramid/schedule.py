"""Stages, windows, per-stage sigma grids, natural <-> global levels (docs/maths.md sections 3-4).

K stages, coarse to fine; stage i lives ``L_i = K - 1 - i`` levels below full resolution. Every
sigma here is *natural* (what the network sees at that stage's resolution) unless a name says
``global``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError


def jump_sigma(sigma: float, gain: float) -> float:
    """Natural level after one level up (docs/maths.md section 5): sigma' = c*sigma / (1 + (c-1)*sigma)."""
    return gain * sigma / (1.0 + (gain - 1.0) * sigma)


def jump_alpha(sigma: float, gain: float) -> float:
    """Scale of up(x) in the jump (docs/maths.md section 5): alpha = 1 / (1 + (c-1)*sigma)."""
    return 1.0 / (1.0 + (gain - 1.0) * sigma)


def shift_ratio(r, shift: float):
    """Warp a local position r in [0, 1]: r -> s*r / (1 + (s-1)*r) (diffusers' shift for one stage)."""
    return shift * r / (1.0 + (shift - 1.0) * r)


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise PyramidflowError(f"{name} must be a finite number, got {value}")
    return value


class PyramidSchedule:
    """Windows and sigma grids of a K-stage pyramid.

    Args:
        num_stages: K >= 1.
        stage_ends: natural sigma at the end of each stage, strictly decreasing, last = 0.
            Default: sigma_end(i) = 1 - (i + 1)/K (the paper's uniform ``stage_range``).
        gain: c of one level (2 spatial, 2*sqrt(2) spatiotemporal); the largest group gain
            for a causal-first-frame transform.
        shift: warp of the position inside each stage (1 = linear grid).
    """

    def __init__(
        self,
        num_stages: int = 3,
        stage_ends: Sequence[float] | None = None,
        gain: float = 2.0,
        shift: float = 1.0,
    ):
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise PyramidflowError(f"num_stages must be an integer >= 1, got {num_stages!r}")
        self.num_stages = num_stages
        self.gain = _finite(gain, "gain")
        if self.gain < 1.0:
            raise PyramidflowError(f"gain must be >= 1 (2 spatial, 2*sqrt(2) spatiotemporal), got {gain}")
        self.shift = _finite(shift, "shift")
        if self.shift <= 0:
            raise PyramidflowError(f"shift must be > 0, got {shift}")
        if stage_ends is None:
            ends = [1.0 - (i + 1) / num_stages for i in range(num_stages)]
            ends[-1] = 0.0
        else:
            ends = [_finite(e, "stage_ends entry") for e in stage_ends]
            if len(ends) != num_stages:
                raise PyramidflowError(
                    f"stage_ends has {len(ends)} entries, expected one per stage ({num_stages})"
                )
            if ends[-1] != 0.0:
                raise PyramidflowError(f"the last stage must end at sigma 0 (clean data), got {ends[-1]}")
            if any(not 0.0 <= e < 1.0 for e in ends):
                raise PyramidflowError(f"stage_ends must lie in [0, 1), got {ends}")
            if any(b >= a for a, b in zip(ends, ends[1:], strict=False)):
                raise PyramidflowError(f"stage_ends must be strictly decreasing, got {ends}")
        self.stage_ends: tuple[float, ...] = tuple(ends)
        starts = [1.0]
        for end in ends[:-1]:
            starts.append(jump_sigma(end, self.gain))
        # With gain >= 1 the jump never lowers sigma, so every window is non-empty.
        self.windows: list[tuple[float, float]] = list(zip(starts, ends, strict=True))

    def __repr__(self) -> str:
        return (
            f"PyramidSchedule(num_stages={self.num_stages}, stage_ends={list(self.stage_ends)}, "
            f"gain={self.gain:.6g}, shift={self.shift:.6g})"
        )

    # ----------------------------------------------------------------- basics
    def check_stage(self, stage: int) -> int:
        if isinstance(stage, bool) or not isinstance(stage, int):
            try:
                stage = int(stage)
            except (TypeError, ValueError):
                raise PyramidflowError(f"stage must be an integer, got {stage!r}") from None
        if not 0 <= stage < self.num_stages:
            raise PyramidflowError(
                f"stage {stage} is out of range: valid stages are 0..{self.num_stages - 1}"
            )
        return stage

    def levels(self, stage: int) -> int:
        """Number of levels below full resolution at which ``stage`` lives: K - 1 - stage."""
        return self.num_stages - 1 - self.check_stage(stage)

    def check_steps(self, steps: Sequence[int]) -> tuple[int, ...]:
        """Validate a steps tuple (one positive integer per stage)."""
        steps = tuple(steps)
        if len(steps) != self.num_stages:
            raise PyramidflowError(
                f"steps has {len(steps)} entries but the schedule has {self.num_stages} stages; "
                f"give one step count per stage, e.g. {','.join(['20'] * self.num_stages)}"
            )
        for s in steps:
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise PyramidflowError(f"every stage needs an integer step count >= 1, got {steps}")
        return steps

    # ----------------------------------------------------------------- grids
    def sigmas(self, stage: int, num_steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """num_steps + 1 natural sigmas from the stage's start to its end (exactly), shifted."""
        stage = self.check_stage(stage)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise PyramidflowError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        start, end = self.windows[stage]
        r = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        r = shift_ratio(r, self.shift)
        grid = end + r * (start - end)
        grid[0], grid[-1] = start, end  # exact endpoints whatever the rounding
        return grid.to(dtype)

    # ------------------------------------------------- natural <-> global
    def to_global(self, sigma_natural, stage: int):
        """sigma_g / (1 - sigma_g) = c^L * sigma_n / (1 - sigma_n) (docs/maths.md section 4)."""
        k = self.gain ** self.levels(stage)
        return _scale_odds(sigma_natural, k)

    def to_natural(self, sigma_global, stage: int):
        """Inverse of ``to_global``: sigma_n = sigma_g / (sigma_g + c^L (1 - sigma_g))."""
        k = self.gain ** self.levels(stage)
        return _scale_odds(sigma_global, 1.0 / k)

    def global_windows(self) -> list[tuple[float, float]]:
        """The windows in global (full-resolution-equivalent) units."""
        return [
            (float(self.to_global(s, i)), float(self.to_global(e, i)))
            for i, (s, e) in enumerate(self.windows)
        ]


def _scale_odds(sigma, k: float):
    """sigma -> sigma' with sigma'/(1-sigma') = k * sigma/(1-sigma); exact at 0 and 1."""
    if isinstance(sigma, Tensor):
        if not torch.isfinite(sigma).all():
            raise PyramidflowError("sigma must be finite: every noise level must lie in [0, 1]")
        if ((sigma < 0) | (sigma > 1)).any():
            raise PyramidflowError(
                f"sigma must lie in [0, 1], got values from {float(sigma.min())} to {float(sigma.max())}"
            )
        return k * sigma / (1.0 - sigma + k * sigma)
    sigma = float(sigma)
    if not math.isfinite(sigma):
        raise PyramidflowError(f"sigma must be a finite number in [0, 1], got {sigma}")
    if not 0.0 <= sigma <= 1.0:
        raise PyramidflowError(f"sigma must lie in [0, 1], got {sigma}")
    return k * sigma / (1.0 - sigma + k * sigma)
