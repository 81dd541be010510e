"""What the distillation methods share (docs/maths.md section 9): a trained ``student`` with an EMA
and one trained opponent (the DMD critic, the adversarial discriminator), two optimizers at two time
scales, a frozen ``teacher`` and text encoder (and autoencoder), and the run's hooks."""

from __future__ import annotations

from torch import nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.training.config import OptimConfig
from pyramidflow.training.methods.base import OptimizerSpec, TrainingMethod


class RunHooks:
    """``validate``, ``finish`` and ``checkpoint_extra`` handed to the callables a run gives
    (``validator(trainer, step, modules)``, ``finisher(trainer)``, the ``extra`` dict)."""

    validator = None
    finisher = None
    extra: dict = {}

    def validate(self, trainer, step: int, modules: dict[str, nn.Module]) -> dict[str, float] | None:
        return self.validator(trainer, step, modules) if self.validator is not None else None

    def finish(self, trainer) -> dict:
        return self.finisher(trainer) if self.finisher is not None else {}

    def checkpoint_extra(self) -> dict:
        return self.extra


class StudentMethod(RunHooks, TrainingMethod):
    """Roles ``student`` and ``opponent_role`` (set by the subclass) trained; ``teacher``,
    ``text_encoder`` and ``autoencoder`` (when modules) frozen. The opponent's optimizer steps every
    training step, the student's every ``ratio``-th (from 0); the student has the EMA."""

    opponent_role = "critic"

    def setup(self, student, teacher, text_encoder, opponent, ratio: int, student_optim: OptimConfig | None,
              opponent_optim: OptimConfig | None, validator, finisher, extra, autoencoder=None) -> None:
        if ratio < 1:
            raise PyramidflowError(f"{self.opponent_role} updates per student update (ratio) must be >= 1, "
                                   f"got {ratio}")
        self.student, self.teacher, self.text_encoder = student, teacher, text_encoder
        self.opponent = opponent
        self.autoencoder, self.ratio = autoencoder, int(ratio)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student_optim = student_optim or OptimConfig()
        self.opponent_optim = opponent_optim or OptimConfig()
        self.validator, self.finisher, self.extra = validator, finisher, dict(extra or {})

    def bind(self, trainer) -> None:
        self.device = trainer.accelerator.device

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, self.opponent_role: self.opponent}

    def frozen_modules(self) -> dict[str, nn.Module]:
        roles = {"teacher": self.teacher}
        for name, m in (("text_encoder", self.text_encoder), ("autoencoder", self.autoencoder)):
            if isinstance(m, nn.Module):
                roles[name] = m
        return roles

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {self.opponent_role: OptimizerSpec((self.opponent_role,), self.opponent_optim),
                "student": OptimizerSpec(("student",), self.student_optim)}

    def ema_roles(self) -> tuple[str, ...]:
        return ("student",)

    def phases(self, step: int) -> list[str]:
        return [self.opponent_role, "student"] if step % self.ratio == 0 else [self.opponent_role]
