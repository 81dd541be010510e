"""What the trainer asks a training method for.

A method owns the models of a run by *role* (``transformer``, ``text_encoder``, ``vae``,
``discriminator``, later ``student``/``critic``...), says which of them are trained by which
optimizer and which get an EMA, and turns a micro-batch into a loss for one *phase* (one optimizer
update). The loop (:class:`pyramidflow.training.trainer.Trainer`) does the rest: devices, data
order, per-example generators, accumulation over micro-batches and processes, gradient averaging
or sharding, clipping, LR schedules, EMA, checkpoints, divergence stop, logging, validation.

Phases of a step run in the order :meth:`TrainingMethod.phases` gives; each phase sees every
micro-batch of the step. A method may keep what one phase computed for a later phase of the same
micro-batch (``MicroBatch.index``), e.g. a VAE's reconstructions for its discriminator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pyramidflow.training.config import OptimConfig


@dataclass
class OptimizerSpec:
    """One optimizer: the roles whose trainable parameters it updates, and its settings."""

    roles: tuple[str, ...]
    config: OptimConfig


@dataclass
class MicroBatch:
    """This process's share of one step's batch."""

    step: int
    index: int  # micro-batch number within the step (accumulation) on this process
    positions: list[int]  # positions in the global batch (seed the per-example generators)
    items: list[Any]  # dataset items
    generators: list[torch.Generator]  # one per example: (seed, step, global position)


@dataclass
class PhaseLoss:
    """A phase's loss on one micro-batch.

    total: differentiable *sum* over the micro-batch's examples (the trainer divides by the global
    batch, so micro-batches and processes add up to the batch mean). logs: name -> (sum, count),
    added over micro-batches and reported as sum / count.
    """

    total: Tensor
    logs: dict[str, tuple[float, int]] = field(default_factory=dict)


def mean_log(value: Tensor | float, count: int) -> tuple[float, int]:
    """A batch-mean value as a (sum, count) log entry."""
    return float(value.detach() if isinstance(value, Tensor) else value) * count, count


class TrainingMethod(ABC):
    """The interface described in the module docstring."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Trained roles: moved to the device, checkpointed, optimised (their trainable parameters)."""

    def bind(self, trainer) -> None:  # noqa: B027 (optional hook)
        """Called once by the trainer after it placed the modules (device and sharding are known)."""

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Roles that are only evaluated (moved to the device, never checkpointed)."""
        return {}

    @abstractmethod
    def optimizers(self) -> dict[str, OptimizerSpec]:
        """Optimizers by name (checkpoint files ``optimizer_NAME.pt``)."""

    def ema_roles(self) -> tuple[str, ...]:
        """Roles whose trainable parameters get an EMA (when ``loop.ema_decay > 0``)."""
        return ()

    def phases(self, step: int) -> list[str]:
        """Optimizers updated at ``step``, in order (default: all, once)."""
        return list(self.optimizers())

    @abstractmethod
    def loss(self, phase: str, batch: MicroBatch) -> PhaseLoss:
        """The loss of ``phase`` on ``batch`` (inside the trainer's autocast)."""

    def validate(self, trainer, step: int, modules: dict[str, nn.Module]) -> dict[str, float] | None:
        """Validation on the main process with ``modules``: the roles holding their EMA weights
        (logged under ``val/``)."""
        return None

    def finish(self, trainer) -> dict[str, Any]:
        """After the last step on the main process (e.g. export a pipeline); merged into the result."""
        return {}

    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON written into every checkpoint's ``meta.json`` (e.g. the run's config)."""
        return {}
