"""The trainer's configuration (typed dataclasses; YAML presets fill them through
:mod:`pyramidflow.config`) and the learning-rate schedule they describe."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import HaarTransform, PyramidSchedule
from pyramidflow.training.temporal_loss import TemporalConfig


@dataclass
class PyramidConfig:
    """The pyramid used in training (MATH.md sections 2-6)."""

    num_stages: int = 3
    stage_ends: tuple[float, ...] | None = None
    temporal: bool = False
    causal_first_frame: bool = False
    shift: float = 1.0
    stage_weights: tuple[float, ...] | None = None  # default 1:2:1 for three stages
    density: str = "uniform"  # or "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def build(self) -> tuple[PyramidSchedule, HaarTransform]:
        transform = HaarTransform(temporal=self.temporal, causal_first_frame=self.causal_first_frame)
        schedule = PyramidSchedule(self.num_stages, self.stage_ends, gain=transform.gain, shift=self.shift)
        return schedule, transform


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "constant"  # constant | cosine | linear (after the warm-up)
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class LoopConfig:
    seed: int = 0
    batch_size: int = 16  # examples per optimiser step, over all processes and accumulation
    grad_accum: int = 1
    max_steps: int = 1000
    mixed_precision: str = "auto"  # auto (bf16 on GPU, none on CPU) | no | bf16 | fp16
    ema_decay: float = 0.999  # 0 disables the EMA copy; warmed up as min(decay, (1 + n) / (10 + n))
    text_dropout: float = 0.1  # classifier-free dropout: the prompt becomes ""
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    validate_every: int = 0  # 0: only at the end (if a validation hook is given)
    max_minutes: float = 0.0  # > 0: also stop (with a checkpoint) once this much wall-clock time passed
    progress: bool = True
    parallel: str = "replicate"  # several processes: replicate (DDP-like) | fsdp (sharded, distributed.py)


@dataclass
class TrainerConfig:
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


def lr_lambda(optim: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then constant, cosine or linear decay to 0 at ``max_steps``."""
    if optim.schedule not in ("constant", "cosine", "linear"):
        raise PyramidflowError(f"unknown lr schedule {optim.schedule!r}; valid: constant, cosine, linear")

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
        if optim.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor
