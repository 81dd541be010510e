"""Adversarial step distillation on frozen teacher features (docs/maths.md section 9).

Roles: ``student`` (trained, with an EMA), ``discriminator`` (trained: small heads on the frozen
teacher's hidden states), ``teacher`` (frozen feature extractor: the original model for "Adv-OD", the
pyramidal one for "Adv-PD"), the frozen ``text_encoder`` and ``autoencoder`` (real clips to model
space).

Each micro-batch draws one step of the student's schedule (stage ``k``, level ``sigma``). The real
clip's clean signal at that stage, ``D = down^{L_k}(x0)``, is put at ``sigma`` with fresh noise and
the student predicts ``x0_hat = x - sigma v`` (9.1). Both ``D`` (real) and ``x0_hat`` (fake) are
re-noised at a level ``s`` of the stage's window with one shared noise (``levels: stage``), or left
clean (``levels: clean``: ``s = 0``, the teacher's features of the clean signals), and passed through
the teacher; forward hooks collect the hidden states of ``feature_layers``, and one head per stage
and layer maps each token to a logit (averaged per sample: per-stage predictions). Losses, per sample:

    discriminator:  hinge: (relu(1 - D(real)) + relu(1 + D(fake))) / 2      (section 18)
    student:        -D(fake) + reconstruction * mean (x0_hat - D)^2          (paper weight 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae import PixelSpace, frames_to_model
from pyramidflow.pyramid.distill import predict_x0, renoise_at, student_positions
from pyramidflow.training.config import OptimConfig
from pyramidflow.training.methods.base import MicroBatch, PhaseLoss, mean_log
from pyramidflow.training.methods.dmd import (
    Student,
    batch_generator,
    draw_levels,
    renoise_window,
    velocity_at,
)
from pyramidflow.training.methods.student import StudentMethod
from pyramidflow.training.packed_loss import split_batch
from pyramidflow.training.vae.losses import hinge_d_loss, hinge_g_loss


@dataclass
class AdversarialConfig:
    """Settings of :class:`AdversarialDistillation`."""

    reconstruction: float = 2.0  # weight of the reconstruction term
    feature_layers: tuple[int, ...] = (-1,)  # teacher blocks whose outputs the heads read
    hidden: int = 64  # width of each head
    ratio: int = 1  # discriminator updates per student update
    levels: str = "stage"  # the discriminator's inputs: re-noised in the step's stage window, or clean

    def check(self) -> None:
        if self.levels not in LEVELS:
            raise PyramidflowError(f"adversarial.levels must be one of {', '.join(LEVELS)}, "
                                   f"got {self.levels!r}")


LEVELS = ("stage", "clean")


def _head(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))


class FeatureHeads(ModelMixin, ConfigMixin):
    """One small MLP per (stage, layer): tokens (B, N, D) -> per-sample logit (B,), averaged."""

    @register_to_config
    def __init__(self, dim: int, stages: int, layers: int, hidden: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.ModuleList(_head(dim, hidden) for _ in range(layers))
            for _ in range(stages))

    def forward(self, features: list[Tensor], stage: int) -> Tensor:
        heads = self.heads[stage]
        logits = [head(f.float()).squeeze(-1).mean(1) for head, f in zip(heads, features, strict=True)]
        return torch.stack(logits).mean(0)


class TeacherFeatures:
    """Hidden states of chosen blocks of a transformer, collected by forward hooks during one call."""

    def __init__(self, teacher: nn.Module, layers: tuple[int, ...]) -> None:
        blocks = getattr(teacher, "blocks", None)
        if blocks is None:
            raise PyramidflowError(f"{type(teacher).__name__} has no .blocks to read features from")
        n = len(blocks)
        bad = [i for i in layers if not -n <= i < n]
        if bad:
            raise PyramidflowError(f"adversarial.feature_layers {bad} out of range for a teacher of {n} "
                                   "blocks")
        self.teacher, self.blocks = teacher, [blocks[i] for i in layers]

    def __call__(self, x: Tensor, sigma: Tensor, text: Tensor, stage: int) -> list[Tensor]:
        found: list[Tensor] = []
        hooks = [b.register_forward_hook(lambda _m, _i, out: found.append(_hidden(out))) for b in self.blocks]
        try:
            velocity_at(self.teacher, x, sigma, text, stage)
        finally:
            for h in hooks:
                h.remove()
        return found


def _hidden(out) -> Tensor:
    """A block's hidden states (B, N, D): PyramidDiT blocks also return their keys/values."""
    return out[0] if isinstance(out, (tuple, list)) else out


class AdversarialDistillation(StudentMethod):
    """See the module docstring."""

    opponent_role = "discriminator"

    def __init__(self, student: nn.Module, teacher: nn.Module, text_encoder, spec: Student,
                 config: AdversarialConfig | None = None, *, autoencoder=None, encoded: bool = False,
                 student_optim: OptimConfig | None = None, disc_optim: OptimConfig | None = None,
                 validator=None, finisher=None, extra: dict | None = None) -> None:
        self.config = config or AdversarialConfig()
        self.config.check()
        self.spec, self.positions = spec, student_positions(spec.schedule, spec.steps)
        self.features = TeacherFeatures(teacher, tuple(self.config.feature_layers))
        dim = int(teacher.config.num_attention_heads * teacher.config.attention_head_dim)
        layers = len(self.config.feature_layers)
        heads = FeatureHeads(dim, spec.schedule.num_stages, layers, self.config.hidden)
        self.setup(student, teacher, text_encoder, heads, self.config.ratio, student_optim, disc_optim,
                   validator, finisher, extra, autoencoder if autoencoder is not None else PixelSpace())
        self.encoded = encoded  # items hold latents already (a latent cache)
        self.device = torch.device("cpu")

    @property
    def discriminator(self) -> nn.Module:
        return self.opponent

    # ------------------------------------------------------------------- loss
    @torch.no_grad()
    def _clean(self, batch: MicroBatch) -> Tensor:
        """The clips (B, T, 3, H, W) in [0, 1] in model space: (B, C, T, h, w)."""
        videos = split_batch([it["video"] for it in batch.items])
        if not isinstance(videos, Tensor):
            raise PyramidflowError("adversarial distillation needs clips of one shape per batch")
        if self.encoded:
            return videos.float().to(self.device)  # (B, C, T, h, w) latents
        ae = self.autoencoder
        return ae.encode(frames_to_model(videos.to(self.device)).to(ae.dtype)).float()

    def _logits(self, x0: Tensor, s: Tensor, eps: Tensor, text: Tensor, stage: int) -> Tensor:
        return self.discriminator(self.features(renoise_at(x0, s, eps), s, text, stage), stage)

    def loss(self, phase: str, batch: MicroBatch) -> PhaseLoss:
        gen = batch_generator(batch)
        with torch.no_grad():
            text = self.text_encoder.encode([it["text"] for it in batch.items])[0].to(self.device)
        pos = self.positions[int(torch.randint(len(self.positions), (), generator=gen))]
        levels = self.spec.schedule.num_stages - 1 - pos.stage
        x0 = self._clean(batch)
        real = self.spec.transform.down(x0, levels) if levels > 0 else x0
        n = real.shape[0]
        noise = torch.randn(real.shape, generator=gen).to(self.device)
        sigma = torch.full((n,), pos.sigma, device=self.device)
        x = renoise_at(real, sigma, noise)
        s = draw_levels(n, renoise_window(self.spec.schedule.windows[pos.stage], "stage"), gen)
        s = s.float().to(self.device)
        if self.config.levels == "clean":  # drawn all the same, so a resumed run repeats its draws
            s = torch.zeros_like(s)
        eps = torch.randn(real.shape, generator=gen).to(self.device)
        if phase == "discriminator":
            with torch.no_grad():
                fake = predict_x0(x, velocity_at(self.student, x, sigma, text, pos.stage), sigma)
            loss = hinge_d_loss(self._logits(real, s, eps, text, pos.stage),
                                self._logits(fake, s, eps, text, pos.stage))
            return PhaseLoss(loss * n, {"loss_discriminator": mean_log(loss, n)})
        if phase != "student":
            raise PyramidflowError(f"unknown phase {phase!r}")
        fake = predict_x0(x, velocity_at(self.student, x, sigma, text, pos.stage), sigma)
        adv = hinge_g_loss(self._logits(fake, s, eps, text, pos.stage))
        recon = (fake - real).pow(2).mean()
        loss = adv + self.config.reconstruction * recon
        return PhaseLoss(loss * n, {"loss_adversarial": mean_log(adv, n),
                                    "loss_reconstruction": mean_log(recon, n),
                                    f"student_stage{pos.stage}": mean_log(loss, n)})
