"""The pyramid core: pure maths on tensors (no nn.Module). See docs/maths.md and docs/pyramid.md.

* :class:`HaarTransform` -- ``down``/``up``/``detail_noise`` between levels (section 2);
  :class:`IdentityTransform` for a patchification pyramid, every level at full resolution (section 9).
* :class:`PyramidSchedule` -- windows, sigma grids, natural <-> global levels (sections 3-4).
* :func:`renoise` -- the exact jump between stages (section 5).
* :func:`training_sample` -- the unified training path (section 6).
* :func:`sample` -- Algorithm 1 for any velocity function, with a step rule and a stage transition
  (:mod:`pyramidflow.pyramid.steps`).
* :class:`PyramidConfig`, :class:`TemporalConfig` -- the configs shared by training and inference.
"""

from pyramidflow.pyramid.config import PyramidConfig, TemporalConfig
from pyramidflow.pyramid.renoise import forward_noise, jump, renoise
from pyramidflow.pyramid.sampler import sample, stage_grids
from pyramidflow.pyramid.schedule import PyramidSchedule, jump_alpha, jump_sigma, shift_ratio
from pyramidflow.pyramid.steps import (
    euler_step,
    haar_jump,
    identity_transition,
    step_rule,
    x0_renoise_step,
)
from pyramidflow.pyramid.training_path import (
    TrainingSample,
    default_stage_weights,
    draw_positions,
    draw_stages,
    training_sample,
)
from pyramidflow.pyramid.transforms import HaarTransform, IdentityTransform

__all__ = [
    "HaarTransform",
    "IdentityTransform",
    "PyramidConfig",
    "PyramidSchedule",
    "TemporalConfig",
    "TrainingSample",
    "default_stage_weights",
    "draw_positions",
    "draw_stages",
    "euler_step",
    "forward_noise",
    "haar_jump",
    "identity_transition",
    "jump",
    "jump_alpha",
    "jump_sigma",
    "renoise",
    "sample",
    "shift_ratio",
    "stage_grids",
    "step_rule",
    "training_sample",
    "x0_renoise_step",
]
