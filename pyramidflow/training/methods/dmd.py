"""Distribution matching distillation (DMD2-style) of a pyramidal model (docs/maths.md section 9).

Roles: ``student`` (the few-step generator, trained, with an EMA), ``critic`` (the *fake* velocity,
trained, starting from the teacher), ``teacher`` (the *real* velocity, frozen: the original
single-stage model "OT" or the pyramidal model "PT") and the frozen ``text_encoder``. Two
optimizers, updated at two time scales: ``critic`` every step, ``student`` every ``ratio``-th step.

Each micro-batch draws one *exit* step of the student's schedule (e.g. one of the five steps of
2-2-1) and rolls the student out to it without autograd (backward simulation through the pyramid:
the few-step rule (9.1) inside a stage, the jump (5.1) between stages;
:func:`pyramidflow.pyramid.distill.rollout_to`). At the exit, at that stage's resolution:

* critic phase: the student's ``x0`` (no autograd) re-noised at a level ``s``; the critic learns its
  velocity with the flow-matching loss of section 12;
* student phase: ``x0 = x - sigma v_student`` with autograd, re-noised at ``s``; the teacher (with
  its own guidance scale ``real_guidance``) and the critic give ``x0_real`` and ``x0_fake``; the loss
  is ``w_dmd[stage]`` times (9.3) plus ``regression`` times the squared distance to the teacher's
  ``x0`` at the exit state.

Levels ``s`` are natural and drawn uniformly in the exit stage's window (``renoise: stage``, the
levels a pyramidal teacher was trained at) or in [0.02, 0.98] (``renoise: full``). With
``evaluate_at: full`` (an original single-stage teacher, "OT") a coarse stage's ``x0`` is lifted
to full resolution first (nearest upsampling, which the gradient passes through) and judged there
at levels of the stage's *global* window. Randomness comes
from the micro-batch's per-example generators, so a resumed run repeats the same draws.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.ppf import patch_sizes_of
from pyramidflow.models.velocity import call_model
from pyramidflow.pipelines.guidance import guided_velocity
from pyramidflow.pyramid.distill import (
    dmd_direction,
    dmd_loss,
    predict_x0,
    renoise_at,
    rollout_to,
    student_positions,
)
from pyramidflow.pyramid.schedule import PyramidSchedule
from pyramidflow.pyramid.steps import Transition, haar_jump
from pyramidflow.pyramid.transforms import HaarTransform
from pyramidflow.training.config import OptimConfig
from pyramidflow.training.methods.base import MicroBatch, PhaseLoss, mean_log
from pyramidflow.training.methods.student import StudentMethod

RENOISE = ("stage", "full")
EVALUATE_AT = ("stage", "full")
FULL_RANGE = (0.02, 0.98)


@dataclass
class DMDConfig:
    """Settings of :class:`DMDDistillation` (section 9)."""

    ratio: int = 5  # critic updates per student update (two time-scale rule)
    w_dmd: tuple[float, ...] | None = None  # per student stage (default 1 everywhere)
    regression: float = 0.01  # weight of the teacher-regression term
    real_guidance: float = 1.0  # guidance scale of the teacher (real score); 1 = none
    renoise: str = "stage"  # stage | full: where the re-noising level of the DMD and critic terms lies
    evaluate_at: str = "stage"  # stage | full: the resolution the teacher and critic judge x0 at

    def check(self, num_stages: int) -> None:
        if self.ratio < 1:
            raise PyramidflowError(f"dmd.ratio must be >= 1, got {self.ratio}")
        if self.renoise not in RENOISE:
            raise PyramidflowError(f"unknown dmd.renoise {self.renoise!r}; valid: {', '.join(RENOISE)}")
        if self.evaluate_at not in EVALUATE_AT:
            raise PyramidflowError(f"unknown dmd.evaluate_at {self.evaluate_at!r}; valid: "
                                   f"{', '.join(EVALUATE_AT)}")
        if self.w_dmd is not None and len(self.w_dmd) != num_stages:
            raise PyramidflowError(f"dmd.w_dmd {list(self.w_dmd)} needs one weight per student stage "
                                   f"({num_stages})")


@dataclass
class Student:
    """What the student is: its pyramid, its few steps per stage and the clip it makes."""

    schedule: PyramidSchedule
    transform: HaarTransform
    steps: tuple[int, ...]
    shape: tuple[int, ...]  # one example's model-space shape (C, T, h, w) at full resolution
    transition: Transition = haar_jump  # identity_transition for a patchification pyramid (PPF)


def velocity_at(model, x: Tensor, sigma: Tensor, text: Tensor, stage: int) -> Tensor:
    """``model``'s velocity at a stage: a patchification model (PPF) runs stage i at patch level i."""
    level = stage if patch_sizes_of(model) is not None else None
    return call_model(model, x, sigma, text, patch_level=level, stage=stage).float()


def batch_generator(batch: MicroBatch) -> torch.Generator:
    """One generator for the micro-batch, seeded from its first example's (deterministic per step)."""
    seed = int(torch.randint(0, 2**62, (), generator=batch.generators[0]))
    return torch.Generator().manual_seed(seed)


def renoise_window(window: tuple[float, float], mode: str) -> tuple[float, float]:
    """Where re-noising levels are drawn: the stage's window (``stage``) or all of [0.02, 0.98]
    (``full``); a stage's window is cut to [0.02, 0.98] too (at s -> 0 the DMD direction is the
    ratio of two vanishing differences, at s -> 1 both scores see pure noise)."""
    if mode == "full":
        return FULL_RANGE
    low, high = max(min(window), FULL_RANGE[0]), min(max(window), FULL_RANGE[1])
    return (low, high) if low < high else (min(window), max(window))


def draw_levels(count: int, window: tuple[float, float], generator: torch.Generator) -> Tensor:
    """(count,) levels uniform in ``window`` (given either way round)."""
    low, high = min(window), max(window)
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


class DMDDistillation(StudentMethod):
    """See the module docstring. ``teacher`` and ``critic_init`` are Wan-call-compatible velocity
    models (``critic_init`` defaults to the teacher; it is copied)."""

    opponent_role = "critic"

    def __init__(self, student: nn.Module, teacher: nn.Module, text_encoder, spec: Student,
                 config: DMDConfig | None = None, *, student_optim: OptimConfig | None = None,
                 critic_optim: OptimConfig | None = None, critic_init: nn.Module | None = None,
                 validator=None, finisher=None, extra: dict | None = None) -> None:
        self.config = config or DMDConfig()
        self.spec = spec
        self.positions = student_positions(spec.schedule, spec.steps)
        self.config.check(spec.schedule.num_stages)
        critic = copy.deepcopy(critic_init if critic_init is not None else teacher)
        critic.requires_grad_(True)
        self.setup(student, teacher, text_encoder, critic, self.config.ratio, student_optim, critic_optim,
                   validator, finisher, extra)
        self.device = torch.device("cpu")
        self._null: Tensor | None = None

    @property
    def critic(self) -> nn.Module:
        return self.opponent

    # --------------------------------------------------------------- helpers
    def _text(self, batch: MicroBatch) -> Tensor:
        with torch.no_grad():
            return self.text_encoder.encode([it["text"] for it in batch.items])[0].to(self.device)

    def _null_text(self) -> Tensor:
        if self._null is None:
            with torch.no_grad():
                self._null = self.text_encoder.encode([""])[0].to(self.device)
        return self._null

    def _exit(self, batch: MicroBatch, text: Tensor, gen: torch.Generator):
        """Roll the student out to a random exit step: (x at the exit, the step's position)."""
        exit_step = int(torch.randint(len(self.positions), (), generator=gen))
        shape = (len(batch.items), *self.spec.shape)

        def student_velocity(x, sigma, stage):
            return velocity_at(self.student, x.to(self.device), sigma.to(self.device), text, stage).cpu()

        x, pos = rollout_to(student_velocity, self.spec.schedule, self.spec.transform, shape, self.spec.steps,
                            exit_step, gen, transition=self.spec.transition)
        return x.to(self.device), pos

    def _judged(self, x0: Tensor, stage: int) -> tuple[Tensor, int, tuple[float, float]]:
        """Where the teacher and the critic judge a stage's ``x0``: (x0 there, the stage index they
        are called with, the window of levels there). ``evaluate_at: full`` lifts a coarse stage's
        ``x0`` to full resolution (``up``, nearest upsampling, differentiable) and uses the stage's
        *global* window: an original single-stage teacher sees what it was trained on."""
        sched = self.spec.schedule
        last, window = sched.num_stages - 1, sched.windows[stage]
        if self.config.evaluate_at == "full" and stage < last:
            lifted = self.spec.transform.up(x0, last - stage)
            return lifted, last, (sched.to_global(window[0], stage), sched.to_global(window[1], stage))
        return x0, stage, window

    def _levels(self, count: int, window: tuple[float, float], gen: torch.Generator) -> Tensor:
        return draw_levels(count, renoise_window(window, self.config.renoise), gen).float().to(self.device)

    def _noise(self, like: Tensor, gen: torch.Generator) -> Tensor:
        return torch.randn(like.shape, generator=gen, dtype=torch.float32).to(self.device)

    def _real(self, text: Tensor):
        w = self.config.real_guidance
        return guided_velocity(self.teacher, text, self._null_text() if w != 1 else None, w,
                               patchify=patch_sizes_of(self.teacher) is not None)

    # ------------------------------------------------------------------- loss
    def loss(self, phase: str, batch: MicroBatch) -> PhaseLoss:
        gen, text = batch_generator(batch), self._text(batch)
        x, pos = self._exit(batch, text, gen)
        sigma_exit = torch.full((x.shape[0],), pos.sigma, device=self.device)
        n = x.shape[0]
        if phase == "critic":
            with torch.no_grad():
                x0 = predict_x0(x, velocity_at(self.student, x, sigma_exit, text, pos.stage), sigma_exit)
                x0, at, window = self._judged(x0, pos.stage)
            s, eps = self._levels(n, window, gen), self._noise(x0, gen)
            v = velocity_at(self.critic, renoise_at(x0, s, eps), s, text, at)
            per = (v.float() - (eps - x0)).pow(2).flatten(1).mean(1)
            return PhaseLoss(per.sum(), {"loss_critic": mean_log(per.mean(), n),
                                         f"critic_stage{pos.stage}": mean_log(per.mean(), n)})
        if phase != "student":
            raise PyramidflowError(f"unknown phase {phase!r}")
        x0 = predict_x0(x, velocity_at(self.student, x, sigma_exit, text, pos.stage), sigma_exit)
        judged, at, window = self._judged(x0, pos.stage)  # autograd flows through the lift
        s, eps = self._levels(n, window, gen), self._noise(judged, gen)
        real = self._real(text)
        with torch.no_grad():
            xs = renoise_at(judged.detach(), s, eps)
            x0_real = predict_x0(xs, real(xs, s, at), s)
            x0_fake = predict_x0(xs, velocity_at(self.critic, xs, s, text, at), s)
            g = dmd_direction(judged.detach(), x0_real, x0_fake)
        weight = 1.0 if self.config.w_dmd is None else float(self.config.w_dmd[pos.stage])
        per_dmd = weight * dmd_loss(judged, g)
        per = per_dmd
        logs = {"loss_dmd": mean_log(per_dmd.mean(), n), f"dmd_stage{pos.stage}": mean_log(per_dmd.mean(), n)}
        if self.config.regression > 0:
            with torch.no_grad():
                x0_teacher = predict_x0(x, real(x, sigma_exit, pos.stage), sigma_exit)
            per_reg = self.config.regression * (x0 - x0_teacher).pow(2).flatten(1).mean(1)
            per = per + per_reg
            logs["loss_regression"] = mean_log(per_reg.mean(), n)
        return PhaseLoss(per.sum(), logs)
