"""What a pipeline needs besides its weights: the space, pyramid, temporal mode and generation defaults.

Saved in ``model_index.json`` by :meth:`PyramidFlowPipeline.save_pretrained`. A training run writes
its whole config into every checkpoint; :meth:`PipelineConfig.from_train_dict` reads the pipeline's
part of that plain dict, so loading a checkpoint never needs the training package.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyramidflow.config import from_dict
from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.config import PyramidConfig, TemporalConfig

SPACES = ("pixel", "latent")


@dataclass
class SamplingConfig:
    """Generation defaults stored with the model (the sample command and validation use them)."""

    steps: tuple[int, ...] = (10, 10, 10)
    first_steps: tuple[int, ...] | None = None  # autoregressive: the first unit's steps
    guidance: float = 4.0  # first frame / first unit
    video_guidance: float | None = None  # later frames / units (default: guidance)
    step_rule: str = "euler"  # euler | x0_renoise (few-step models; pyramidflow.pyramid.steps)

    def check(self) -> None:
        from pyramidflow.pyramid.steps import step_rule

        step_rule(self.step_rule)


@dataclass
class PipelineConfig:
    """A pipeline's non-weight configuration (``model_index.json``)."""

    space: str = "pixel"  # pixel | latent (then the pipeline holds a VAE)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    frames: int = 4  # default video frames
    height: int = 32
    width: int = 32
    fps: float = 8.0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # shapes models: frames in which the training clips covered a speed's share of the frame (None:
    # the clip); the evaluator reads speeds on this scale and real reference clips are drawn with it
    travel_frames: int | None = None

    def check(self) -> None:
        if self.space not in SPACES:
            raise PyramidflowError(f"unknown space {self.space!r}; valid: {', '.join(SPACES)}")
        self.temporal.check()
        self.sampling.check()
        self.pyramid.check_temporal(self.temporal)

    @classmethod
    def from_train_dict(cls, train: dict) -> PipelineConfig:
        """The pipeline part of a training config written as a plain dict (a checkpoint's ``meta.json``)."""
        data = train.get("data", {})
        picked = {key: train[key] for key in ("space", "pyramid", "temporal", "sampling") if key in train}
        picked.update({key: data[key] for key in ("frames", "height", "width", "fps", "travel_frames")
                       if key in data})
        return from_dict(cls, picked)
