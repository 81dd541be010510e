"""The unified pyramidal flow-matching loss on whole clips, one model call per stage present
(docs/maths.md section 6; Pyramid Flow Eq. 9-11).

One transformer serves every stage. A batch draws a stage per example (default 1:2:1), a point
on that stage's coupled path, and regresses the network's velocity onto the path's target. The
loss is the per-example mean squared error averaged over examples, so examples at different
resolutions weigh the same (as in the reference).

``model`` is anything called like diffusers' ``WanTransformer3DModel``:
``model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pyramidflow.models.velocity import call_model
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, TrainingSample, training_sample


@dataclass
class LossOutput:
    loss: Tensor  # scalar, differentiable
    per_example: Tensor  # (B,) detached
    stage: Tensor  # (B,) long
    sigma: Tensor  # (B,)
    per_stage: dict[int, float] = field(default_factory=dict)  # mean loss of each stage present
    total: Tensor | None = None  # scalar, differentiable: the sum over examples


def per_example_sample(
    x0: Tensor, schedule: PyramidSchedule, transform: HaarTransform, generators: Sequence[torch.Generator],
    **kwargs,
) -> TrainingSample:
    """``training_sample`` with one generator per example (stages drawn per example).

    The draws of example i depend only on ``generators[i]``, so a batch split across processes
    or accumulation steps sees exactly the draws of the whole batch in one process.
    """
    if len(generators) != x0.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {x0.shape[0]}")
    pyramid = kwargs.pop("clean_pyramid", None)
    parts = []
    for i, gen in enumerate(generators):
        extra = {"clean_pyramid": [p[i : i + 1] for p in pyramid]} if pyramid is not None else {}
        parts.append(training_sample(x0[i : i + 1], schedule, transform, generator=gen, **kwargs, **extra))
    return TrainingSample(
        x_t=[p.x_t[0] for p in parts],
        sigma=torch.cat([p.sigma for p in parts]),
        target=[p.target[0] for p in parts],
        stage=torch.cat([p.stage for p in parts]),
        r=torch.cat([p.r for p in parts]),
    )


def pyramid_flow_loss(
    model,
    x0: Tensor,
    text: Tensor,
    schedule: PyramidSchedule,
    transform: HaarTransform,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    *,
    stage: int | None = None,
    stage_weights: Sequence[float] | None = None,
    density: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    clean_pyramid: Sequence[Tensor] | None = None,
    patchify: bool = False,
) -> LossOutput:
    """Loss on a full-resolution batch ``x0`` (B, C, T, H, W) with text embeddings ``text`` (B, L, D).

    Examples of one stage share a resolution and go through the model together (one call per
    stage present), so mixed-stage batches need no padding. ``generator`` may be a list with one
    generator per example (see ``per_example_sample``). The returned ``loss`` is the mean over
    the batch; ``per_example.sum()`` serves callers that normalise by a larger (global) batch.
    The path is drawn on ``x0``'s device (so CPU generators work); the model runs on ``text``'s.
    ``patchify``: stage s runs the model at patch level s (a patchification pyramid, docs/maths.md
    section 9, with its :class:`IdentityTransform`).
    """
    kwargs = dict(stage=stage, stage_weights=stage_weights, density=density, logit_mean=logit_mean,
                  logit_std=logit_std, clean_pyramid=clean_pyramid)
    if isinstance(generator, (list, tuple)):
        ts = per_example_sample(x0, schedule, transform, generator, **kwargs)
    else:
        ts = training_sample(x0, schedule, transform, generator=generator, **kwargs)
    dev = text.device  # draws happen where x0 is (e.g. the CPU); the model runs where the text is
    per_example = torch.zeros(x0.shape[0], dtype=torch.float32, device=dev)
    total = torch.zeros((), dtype=torch.float32, device=dev)
    per_stage: dict[int, float] = {}
    for s, (idx, x_t, sigma, target) in ts.by_stage().items():
        idx = idx.to(dev)
        pred = call_model(model, x_t.to(dev, x0.dtype), sigma.to(dev), text[idx],
                          patch_level=s if patchify else None, stage=s)
        err = (pred.float() - target.to(dev).float()).pow(2).flatten(1).mean(1)  # (b,)
        total = total + err.sum()
        per_example = per_example.index_copy(0, idx, err.detach())
        per_stage[s] = float(err.detach().mean())
    return LossOutput(total / x0.shape[0], per_example, ts.stage.to(dev), ts.sigma.to(dev), per_stage, total)
