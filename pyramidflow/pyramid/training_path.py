"""The unified training path over stages (docs/maths.md section 6; Pyramid Flow Eq. 9-11 in sigma form).

For stage i with one noise draw n shared by both ends (coupled endpoints):

    start  = (1 - s_s) up(x0^(i-1)) + s_s n        (stage 0: start = n)
    end    = (1 - s_e) x0^(i)       + s_e n
    x      = end + r (start - end),   sigma = s_e + r (s_s - s_e)
    target = (start - end) / (s_s - s_e)           (= dx/dsigma along the path)

x0^(i) is the clean signal at stage i's resolution: ``down^{L_i}(x0)`` (definition 1, latent
space) or a caller-supplied per-stage clean pyramid (definition 2, e.g. VAE encodings of a video
downsampled in pixel space).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.schedule import PyramidSchedule
from pyramidflow.pyramid.transforms import HaarTransform

DENSITIES = ("uniform", "logit_normal")


@dataclass
class TrainingSample:
    """Inputs and targets of one training batch.

    With a fixed ``stage`` every field is batched: ``x_t`` and ``target`` are (B, C, T', H', W').
    With per-example stages the resolutions differ, so ``x_t`` and ``target`` are lists of B
    tensors (C, T_i, H_i, W_i); ``by_stage()`` regroups them into batched tensors.
    """

    x_t: Tensor | list[Tensor]
    sigma: Tensor  # (B,) natural noise level of x_t; timestep = 1000 * sigma
    target: Tensor | list[Tensor]
    stage: Tensor  # (B,) long
    r: Tensor  # (B,) position inside the stage window, 1 = start, 0 = end

    def by_stage(self) -> dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """{stage: (indices (b,), x_t (b, C, T, H, W), sigma (b,), target (b, C, T, H, W))}."""
        groups: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        for s in torch.unique(self.stage).tolist():
            idx = torch.nonzero(self.stage == s).flatten()
            if isinstance(self.x_t, Tensor):
                x, tgt = self.x_t[idx], self.target[idx]
            else:
                x = torch.stack([self.x_t[i] for i in idx.tolist()])
                tgt = torch.stack([self.target[i] for i in idx.tolist()])
            groups[int(s)] = (idx, x, self.sigma[idx], tgt)
        return groups


def default_stage_weights(num_stages: int) -> tuple[float, ...]:
    """1:2:1 for three stages (the reference's tuned mix), uniform otherwise."""
    return (1.0, 2.0, 1.0) if num_stages == 3 else (1.0,) * num_stages


def draw_positions(
    batch: int,
    generator=None,
    device=None,
    density: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> Tensor:
    """Positions r in (0, 1) inside a stage: uniform, or logit-normal r = sigmoid(N(m, s^2))."""
    if density == "uniform":
        return torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    if density == "logit_normal":
        if not (math.isfinite(logit_mean) and math.isfinite(logit_std) and logit_std > 0):
            raise PyramidflowError(
                f"logit_normal needs a finite logit_mean and a finite logit_std > 0, "
                f"got mean {logit_mean}, std {logit_std}"
            )
        z = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
        return torch.sigmoid(logit_mean + logit_std * z)
    raise PyramidflowError(f"unknown density {density!r}; valid: {', '.join(DENSITIES)}")


def draw_stages(
    batch: int, num_stages: int, weights: Sequence[float] | None = None, generator=None, device=None
) -> Tensor:
    """Per-example stage indices (B,) drawn with probabilities proportional to ``weights``."""
    weights = default_stage_weights(num_stages) if weights is None else tuple(float(w) for w in weights)
    if len(weights) != num_stages:
        raise PyramidflowError(
            f"stage_weights has {len(weights)} entries, expected one per stage ({num_stages})"
        )
    w = torch.tensor(weights, dtype=torch.float64, device=device)
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise PyramidflowError(f"stage_weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return torch.multinomial(w, batch, replacement=True, generator=generator)


def _clean_at(x0: Tensor, pyramid, transform: HaarTransform, schedule: PyramidSchedule, stage: int, idx):
    if pyramid is not None:
        return pyramid[stage][idx]
    return transform.down(x0[idx], schedule.levels(stage))


def _check_pyramid(pyramid, x0: Tensor, schedule: PyramidSchedule, transform: HaarTransform) -> None:
    if len(pyramid) != schedule.num_stages:
        raise PyramidflowError(
            f"clean_pyramid has {len(pyramid)} entries, expected one per stage ({schedule.num_stages}), "
            "coarse to fine"
        )
    for i, clean in enumerate(pyramid):
        want = transform.shape_at(x0.shape, schedule.levels(i))
        if tuple(clean.shape) != want:
            raise PyramidflowError(f"clean_pyramid[{i}] has shape {tuple(clean.shape)}, expected {want}")


def training_sample(
    x0: Tensor,
    schedule: PyramidSchedule,
    transform: HaarTransform,
    stage: int | None = None,
    generator: torch.Generator | None = None,
    *,
    stage_weights: Sequence[float] | None = None,
    density: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    clean_pyramid: Sequence[Tensor] | None = None,
) -> TrainingSample:
    """Draw (x_t, sigma, target) on the pyramidal path for a full-resolution batch ``x0``.

    Args:
        x0: clean full-resolution batch (B, C, T, H, W).
        stage: train every example at this stage; ``None`` draws a stage per example with
            probabilities proportional to ``stage_weights`` (default 1:2:1 for K = 3).
        density: ``"uniform"`` or ``"logit_normal"`` over the position r inside the stage.
        clean_pyramid: definition 2 -- per-stage clean signals, coarse to fine, replacing
            ``down^{L_i}(x0)``.

    Random draws, in order: stages, positions, then one noise tensor per stage present.
    """
    if not isinstance(x0, Tensor) or x0.dim() != 5:
        raise PyramidflowError("x0 must be a (B, C, T, H, W) tensor")
    transform.check_shape(x0.shape, schedule.num_stages - 1)
    if not x0.is_floating_point():
        raise PyramidflowError(f"x0 must be floating point, got {x0.dtype}")
    if clean_pyramid is not None:
        _check_pyramid(clean_pyramid, x0, schedule, transform)
    batch, device = x0.shape[0], x0.device
    if stage is None:
        stages = draw_stages(batch, schedule.num_stages, stage_weights, generator, device)
    else:
        stages = torch.full((batch,), schedule.check_stage(stage), dtype=torch.long, device=device)
    r = draw_positions(batch, generator, device, density, logit_mean, logit_std)
    sigma = torch.empty(batch, dtype=torch.float64, device=device)
    x_items: list[Tensor] = []
    t_items: list[Tensor] = []
    order: list[int] = []
    for s in sorted(torch.unique(stages).tolist()):
        idx = torch.nonzero(stages == s).flatten()
        s_start, s_end = schedule.windows[s]
        clean = _clean_at(x0, clean_pyramid, transform, schedule, s, idx)
        noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
        end = (1.0 - s_end) * clean + s_end * noise
        if s == 0:
            start = noise
        else:
            prev = _clean_at(x0, clean_pyramid, transform, schedule, s - 1, idx)
            start = (1.0 - s_start) * transform.up(prev) + s_start * noise
        rs = r[idx].to(clean.dtype).view(-1, 1, 1, 1, 1)
        x = end + rs * (start - end)
        target = (start - end) / (s_start - s_end)
        sigma[idx] = s_end + r[idx] * (s_start - s_end)
        x_items.extend(x.unbind(0))
        t_items.extend(target.unbind(0))
        order.extend(idx.tolist())
    sigma = sigma.to(torch.float64 if x0.dtype == torch.float64 else torch.float32)
    if stage is not None:  # one group, already in batch order
        return TrainingSample(x, sigma, target, stages, r)
    inverse = sorted(range(batch), key=order.__getitem__)
    return TrainingSample(
        [x_items[j] for j in inverse], sigma, [t_items[j] for j in inverse], stages, r
    )
