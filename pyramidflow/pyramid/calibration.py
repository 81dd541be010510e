"""Per-level noise calibration from data (docs/maths.md section 4, "Calibration").

The natural level of section 4 is defined against ``down^L(x0)``, the clean signal at that
resolution. A model trained at full resolution (a pretrained Wan) has learnt how loud the clean
signal is there; real latents are not piecewise constant, so going down a level keeps only the low
band of their spectrum and the clean signal gets quieter. With the orthonormal Haar analysis of
section 2 (low band ``c * down(y)``, c = sqrt(m)) one level keeps

    c_eff^2 = E[(c * down(y))^2] / E[y^2] = m * (share of y's energy in the low band)   (4.2)

per token group: c_eff = c for piecewise-constant data, 1 for white noise. Each level step leaves the
clean signal c_eff / c as loud; after L levels it is

    rho_L = prod_{l < L} sum_g w_g,l * c_eff,g,l / c_g     (w: the groups' shares of the entries)

as loud as at full resolution (one token group: rms(down^L x0) / rms(x0)), so a stage-L tensor at
natural level sigma_n has the signal-to-noise ratio a full-resolution model associates with the
*perceived* level

    odds(sigma_perceived) = odds(sigma_n) / rho_L,     odds(s) = s / (1 - s).            (4.3)

Calibrated stage ends put every boundary at the perceived level the uncalibrated schedule meant:
``end_i = scale_odds(nominal_end_i, rho_{L_i})`` (lower natural ends for rho < 1). All pure maths
on tensors; ``pyramidflow calibrate`` prints the measurements for a latent cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.schedule import PyramidSchedule, _scale_odds
from pyramidflow.pyramid.transforms import HaarTransform


@dataclass
class LevelStats:
    """Measured statistics of one level step l -> l + 1 (levels below full resolution)."""

    level: int  # the finer level l of the step
    low_share: list[float]  # per token group: share of the energy in the low band
    gain: list[float]  # per token group: c_eff (4.2)
    exact_gain: list[float]  # per token group: c = sqrt(m)
    rho: float  # rho_{l+1}: how loud the clean signal is l + 1 levels down, relative to full resolution


class EnergyMeter:
    """Accumulates, over batches of clean signals x0 (B, C, T, H, W), the energies needed for
    (4.2)-(4.3) up to ``levels`` levels down (float64 sums; call :meth:`stats` at the end)."""

    def __init__(self, transform: HaarTransform, levels: int) -> None:
        if levels < 1:
            raise PyramidflowError(f"levels must be >= 1, got {levels}")
        self.transform, self.levels = transform, int(levels)
        groups = len(transform.groups)
        self.count = torch.zeros((), dtype=torch.float64)  # entries seen at full resolution
        self.group_total = torch.zeros(levels, groups, dtype=torch.float64)  # sum y_l^2 per group
        self.group_low = torch.zeros(levels, groups, dtype=torch.float64)  # sum lowband^2 per group
        self.group_count = torch.zeros(levels, groups, dtype=torch.float64)  # fine entries per group

    def add(self, x0: Tensor) -> None:
        self.transform.check_shape(x0.shape, self.levels)
        y = x0.double()
        self.count += y.numel()
        for level in range(self.levels):
            low = self.transform.down(y)  # the low band is c * down(y) per group (section 2)
            t = self.transform
            parts = zip(t.split_groups(y), t.split_groups(low), t.groups, strict=True)
            for g, (part, coarse, group) in enumerate(parts):
                self.group_total[level, g] += part.pow(2).sum()
                self.group_low[level, g] += group.children * coarse.pow(2).sum()
                self.group_count[level, g] += part.numel()
            y = low

    def stats(self) -> list[LevelStats]:
        if self.count == 0:
            raise PyramidflowError("no data was measured")
        out, rho = [], 1.0
        for level in range(self.levels):
            share, gain, exact = [], [], []
            for g, group in enumerate(self.transform.groups):
                if self.group_count[level, g] == 0 or self.group_total[level, g] == 0:
                    share.append(float("nan")), gain.append(float("nan")), exact.append(group.gain)
                    continue
                s = float(self.group_low[level, g] / self.group_total[level, g])
                share.append(s)
                gain.append((group.children * s) ** 0.5)  # (4.2)
                exact.append(group.gain)
            weights = self.group_count[level] / self.group_count[level].sum()
            ratios = torch.tensor(gain, dtype=torch.float64) / torch.tensor(exact, dtype=torch.float64)
            rho *= float((weights * ratios).nansum())
            out.append(LevelStats(level, share, gain, exact, rho))
        return out


def measure_levels(batches: Iterable[Tensor], transform: HaarTransform, levels: int) -> list[LevelStats]:
    """(4.2)-(4.3) over clean signals (B, C, T, H, W) given in batches (e.g. a latent cache)."""
    meter = EnergyMeter(transform, levels)
    for x0 in batches:
        meter.add(x0 if x0.dim() == 5 else x0[None])
    return meter.stats()


def perceived_sigma(sigma_natural, rho: float):
    """(4.3): the full-resolution level with the SNR of a natural level whose clean signal has
    relative RMS ``rho``: odds / rho."""
    if not rho > 0:
        raise PyramidflowError(f"rho must be > 0, got {rho}")
    return _scale_odds(sigma_natural, 1.0 / rho)


def calibrated_stage_ends(schedule: PyramidSchedule, rhos: Sequence[float]) -> list[float]:
    """Natural stage ends whose perceived levels (4.3) are the schedule's own ends; ``rhos[l]`` is
    rho after l + 1 levels (``LevelStats.rho``), stage i lives ``schedule.levels(i)`` levels down."""
    if len(rhos) < schedule.num_stages - 1:
        raise PyramidflowError(f"{schedule.num_stages} stages need rho for {schedule.num_stages - 1} "
                               f"levels, got {len(rhos)}")
    ends = []
    for i, end in enumerate(schedule.stage_ends):
        levels = schedule.levels(i)
        ends.append(float(_scale_odds(end, rhos[levels - 1])) if levels else float(end))
    return ends
