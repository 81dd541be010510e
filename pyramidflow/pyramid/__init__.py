"""The pyramid core: pure maths on tensors (no nn.Module). See MATH.md and CORE_API.md.

* :class:`HaarTransform` -- ``down``/``up``/``detail_noise`` between levels (section 2).
* :class:`PyramidSchedule` -- windows, sigma grids, natural <-> global levels (sections 3-4).
* :func:`renoise` -- the exact jump between stages (section 5).
* :func:`training_sample` -- the unified training path (section 6).
* :func:`sample` -- Algorithm 1 for any velocity function.
"""

from pyramidflow.pyramid.renoise import forward_noise, jump, renoise
from pyramidflow.pyramid.sampler import sample, stage_grids
from pyramidflow.pyramid.schedule import PyramidSchedule, jump_alpha, jump_sigma, shift_ratio
from pyramidflow.pyramid.training_path import (
    TrainingSample,
    default_stage_weights,
    draw_positions,
    draw_stages,
    training_sample,
)
from pyramidflow.pyramid.transforms import HaarTransform

__all__ = [
    "HaarTransform",
    "PyramidSchedule",
    "TrainingSample",
    "default_stage_weights",
    "draw_positions",
    "draw_stages",
    "forward_noise",
    "jump",
    "jump_alpha",
    "jump_sigma",
    "renoise",
    "sample",
    "shift_ratio",
    "stage_grids",
    "training_sample",
]
