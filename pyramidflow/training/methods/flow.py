"""Pyramidal flow matching as a training method (docs/maths.md sections 6, 7 and 12).

Roles: ``transformer`` (trained), ``text_encoder`` (trained when it is the embedded encoder, else
frozen), ``autoencoder`` (frozen: a VAE, or :class:`PixelSpace` for pixel models). One optimizer,
``main``; EMA on every trained role.

A micro-batch's clips, (T, 3, H, W) in [0, 1], are encoded to model space (or taken as they are
from a latent cache), the prompt of each example is dropped to "" with probability
``text_dropout`` (classifier-free guidance), and the unified loss is computed:

* full-sequence clips of one shape: :func:`pyramid_flow_loss`, one model call per stage present;
* autoregressive units, mixed clip lengths, or sharded modules: :func:`packed_flow_loss`, one
  packed call (every process makes the same number of forward passes).

With ``pyramid.patchify`` (a :class:`pyramidflow.models.ppf.PPFDiT`, docs/maths.md section 9) every
stage is at full resolution, so the path is plain flow matching, ``(1 - sigma) x0 + sigma eps`` with
target ``eps - x0``, sigma drawn in the example's stage window, and the model runs that stage's patch
level.

Dataset items may carry ``clean_pyramid``: definition-2 clean signals (one tensor (C, T_i, H_i, W_i)
per stage, coarse to fine) used instead of down-sampling the clip (section 6).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pyramidflow.models.ppf import check_stage_levels
from pyramidflow.models.vae import PixelSpace, frames_to_model
from pyramidflow.pyramid import PyramidConfig, TemporalConfig
from pyramidflow.training.config import OptimConfig
from pyramidflow.training.flow_loss import LossOutput, pyramid_flow_loss
from pyramidflow.training.methods.base import MicroBatch, OptimizerSpec, PhaseLoss, TrainingMethod
from pyramidflow.training.methods.student import RunHooks
from pyramidflow.training.packed_loss import packed_flow_loss, split_batch


def _text_fn(text_encoder) -> Callable[[list[str]], Tensor]:
    """prompts -> (B, L, D) (the mask folded in as zero padding)."""
    if hasattr(text_encoder, "encode"):
        return lambda prompts: text_encoder.encode(prompts)[0]
    return text_encoder


class FlowMatching(RunHooks, TrainingMethod):
    """The unified pyramidal flow-matching objective; see the module docstring.

    Args:
        transformer: called like diffusers' ``WanTransformer3DModel`` (``forward_packed`` too for the
            packed path, e.g. :class:`PyramidDiT`).
        text_encoder: ``encode(prompts) -> (embeddings, mask)`` or a callable ``prompts -> (B, L, D)``.
        autoencoder: clips in [-1, 1] -> model space (default :class:`PixelSpace`); ``None`` with
            ``encoded=True`` when items are already latents (a latent cache).
        train_text_encoder: optimise the text encoder too (the embedded encoder is trained).
        validator: ``validator(trainer, step, modules) -> scores`` (main process, EMA weights).
    """

    def __init__(self, transformer: nn.Module, text_encoder, *, pyramid: PyramidConfig | None = None,
                 temporal: TemporalConfig | None = None, optim: OptimConfig | None = None,
                 autoencoder=None, encoded: bool = False, train_text_encoder: bool = False,
                 text_dropout: float = 0.1, validator=None, extra: dict | None = None,
                 finisher=None) -> None:
        self.transformer, self.text_encoder = transformer, text_encoder
        self.pyramid, self.temporal = pyramid or PyramidConfig(), temporal or TemporalConfig()
        self.temporal.check()
        self.pyramid.check_temporal(self.temporal)
        check_stage_levels(transformer, self.pyramid)
        self.optim = optim or OptimConfig()
        self.autoencoder = None if encoded else (autoencoder if autoencoder is not None else PixelSpace())
        self.train_text_encoder, self.text_dropout = train_text_encoder, float(text_dropout)
        self.schedule, self.transform = self.pyramid.build()
        self.encode_text = _text_fn(text_encoder)
        self.validator, self.finisher, self.extra = validator, finisher, dict(extra or {})
        self.device = torch.device("cpu")
        self.packed_always = False  # sharded modules: one packed call on every process

    def bind(self, trainer) -> None:
        self.device = trainer.accelerator.device
        self.packed_always = trainer.sharding is not None

    # ------------------------------------------------------------------ roles
    def modules(self) -> dict[str, nn.Module]:
        roles = {"transformer": self.transformer}
        if self.train_text_encoder:
            roles["text_encoder"] = self.text_encoder
        return roles

    def frozen_modules(self) -> dict[str, nn.Module]:
        roles = {}
        if not self.train_text_encoder and isinstance(self.text_encoder, nn.Module):
            roles["text_encoder"] = self.text_encoder
        if isinstance(self.autoencoder, nn.Module):
            roles["autoencoder"] = self.autoencoder
        return roles

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"main": OptimizerSpec(tuple(self.modules()), self.optim)}

    def ema_roles(self) -> tuple[str, ...]:
        return tuple(self.modules())

    # ------------------------------------------------------------------- data
    def to_model_space(self, videos: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        """Clips (B, T, 3, H, W) (or a list of (T, 3, H, W)) in [0, 1] -> model-space examples on the CPU,
        where the training paths are drawn with the CPU generators (the same run on every device)."""
        if self.autoencoder is None:
            return videos.float() if isinstance(videos, Tensor) else [v.float() for v in videos]
        ae, device = self.autoencoder, self.device

        def encode(v: Tensor) -> Tensor:
            return ae.encode(frames_to_model(v.to(device)).to(ae.dtype)).float().cpu()

        if isinstance(videos, Tensor):
            return encode(videos)
        return [encode(v[None]) for v in videos]

    def _texts(self, batch: MicroBatch) -> list[str]:
        """Prompts with classifier-free dropout, drawn first from each example's generator."""
        return ["" if float(torch.rand((), generator=g)) < self.text_dropout else it["text"]
                for g, it in zip(batch.generators, batch.items, strict=True)]

    # ------------------------------------------------------------------- loss
    def loss(self, phase: str, batch: MicroBatch) -> PhaseLoss:
        videos = split_batch([it["video"] for it in batch.items])
        x0 = self.to_model_space(videos)
        text = self.encode_text(self._texts(batch))
        pyramids = [it.get("clean_pyramid") if isinstance(it, dict) else None for it in batch.items]
        pyramids = None if all(p is None for p in pyramids) else pyramids
        path = self.pyramid.path_kwargs()
        if isinstance(x0, list) or self.temporal.autoregressive or self.packed_always:
            examples = x0 if isinstance(x0, list) else list(x0.split(1, dim=0))
            # per example (1, C, T_i, h_i, w_i) levels
            batched = None if pyramids is None else [[lv[None] for lv in p] for p in pyramids]
            out = packed_flow_loss(self.transformer, examples, text, self.schedule, self.transform,
                                   batch.generators, self.temporal, clean_pyramids=batched,
                                   patchify=self.pyramid.patchify, **path)
        else:
            stacked = None if pyramids is None else [torch.stack(lv) for lv in zip(*pyramids, strict=True)]
            out = pyramid_flow_loss(self.transformer, x0, text, self.schedule, self.transform,
                                    batch.generators, clean_pyramid=stacked, patchify=self.pyramid.patchify,
                                    **path)
        return PhaseLoss(out.total, _stage_logs(out))


def _stage_logs(out: LossOutput) -> dict[str, tuple[float, int]]:
    """``loss_stageS``: (sum, count) of the per-example losses of each stage present."""
    logs = {}
    for s in out.stage.unique().tolist():
        sel = out.per_example[out.stage == s]
        logs[f"loss_stage{int(s)}"] = (float(sel.sum()), int(sel.numel()))
    return logs
