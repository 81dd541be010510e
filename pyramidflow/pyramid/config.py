"""Configs of the pyramid and of the temporal mode, shared by training and inference.

Plain dataclasses (YAML presets fill them through :mod:`pyramidflow.config`); they sit at the bottom
of the package so that a saved pipeline and a training run describe their pyramid the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.schedule import PyramidSchedule
from pyramidflow.pyramid.steps import Transition, haar_jump, identity_transition
from pyramidflow.pyramid.transforms import HaarTransform, IdentityTransform

TEMPORAL_MODES = ("full_sequence", "autoregressive")
UNIT_DRAWS = ("uniform", "variable_length")  # pyramidflow.pyramid.temporal.unit_probabilities


@dataclass
class PyramidConfig:
    """The pyramid (docs/maths.md sections 2-6): stages, windows, transform and the training mix.

    ``patchify``: a patchification pyramid (section 9): every stage at full resolution, stage i at
    patch level i of a :class:`pyramidflow.models.ppf.PPFDiT`, meeting windows (c = 1) and the
    identity between stages; ``temporal`` and ``causal_first_frame`` must then be false.
    """

    num_stages: int = 3
    stage_ends: tuple[float, ...] | None = None
    temporal: bool = False
    causal_first_frame: bool = False
    shift: float = 1.0
    stage_weights: tuple[float, ...] | None = None  # default 1:2:1 for three stages
    density: str = "uniform"  # or "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    patchify: bool = False  # stages are patch levels at full resolution (PPF), not resolutions

    def build(self) -> tuple[PyramidSchedule, HaarTransform | IdentityTransform]:
        if self.patchify:
            if self.temporal or self.causal_first_frame:
                raise PyramidflowError("pyramid.patchify keeps the full resolution at every stage: "
                                       "pyramid.temporal and pyramid.causal_first_frame must be false")
            transform = IdentityTransform()
        else:
            transform = HaarTransform(temporal=self.temporal, causal_first_frame=self.causal_first_frame)
        schedule = PyramidSchedule(self.num_stages, self.stage_ends, gain=transform.gain, shift=self.shift)
        return schedule, transform

    def check_temporal(self, temporal: TemporalConfig) -> None:
        """Raise unless this pyramid serves ``temporal``'s mode (a patchification pyramid: whole clips)."""
        if self.patchify and temporal.autoregressive:
            raise PyramidflowError("pyramid.patchify generates whole clips at full resolution: it needs "
                                   "temporal.mode: full_sequence")

    def transition(self) -> Transition:
        """Between stages: the identity for a patchification pyramid, else the renoising jump."""
        return identity_transition if self.patchify else haar_jump

    def path_kwargs(self) -> dict:
        """The keyword arguments of :func:`pyramidflow.pyramid.training_sample` this config sets."""
        return dict(stage_weights=self.stage_weights, density=self.density, logit_mean=self.logit_mean,
                    logit_std=self.logit_std)


@dataclass
class TemporalConfig:
    """How a clip is generated: all frames at once, or unit by unit with the temporal pyramid
    (docs/maths.md section 7)."""

    mode: str = "full_sequence"  # full_sequence | autoregressive
    frames_per_unit: int = 1  # frames (model space: latent frames) per autoregressive unit
    corrupt_max: float = 1 / 3  # training history noise level ~ U(0, corrupt_max)
    max_history: int | None = None  # autoregressive: history units kept (the most recent); None: all
    unit_draw: str = "uniform"  # training: which unit is the current one (docs/maths.md section 7)
    history_shift: float = 0.0  # training: std (full-resolution pixels) of a random move of each history unit

    def check(self) -> None:
        if self.mode not in TEMPORAL_MODES:
            raise PyramidflowError(f"unknown temporal mode {self.mode!r}; valid: {', '.join(TEMPORAL_MODES)}")
        if self.frames_per_unit < 1:
            raise PyramidflowError(f"frames_per_unit must be >= 1, got {self.frames_per_unit}")
        if not 0.0 <= self.corrupt_max <= 1.0:
            raise PyramidflowError(f"corrupt_max must lie in [0, 1], got {self.corrupt_max}")
        if self.unit_draw not in UNIT_DRAWS:
            raise PyramidflowError(f"unknown unit_draw {self.unit_draw!r}; valid: {', '.join(UNIT_DRAWS)}")
        if self.max_history is not None and self.max_history < 1:
            raise PyramidflowError(f"max_history must be >= 1 (or null for all), got {self.max_history}")
        if not 0.0 <= self.history_shift <= 4.0:
            raise PyramidflowError(f"history_shift must lie in [0, 4] pixels, got {self.history_shift}")

    @property
    def autoregressive(self) -> bool:
        return self.mode == "autoregressive"
