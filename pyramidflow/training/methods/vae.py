"""The causal video VAE as a training method (``pyramidflow train-vae``; docs/maths.md section 18).

Objective of the ``vae`` phase (Pyramid Flow paper Sec. 4, VAE training):

    L = l1 |x - x^| + mse (x - x^)^2 + ssim (1 - SSIM) + chroma |c(x) - c(x^)| + kl KL + perceptual P
        + disc_weight G_hinge      (c: colour minus grey level, docs/maths.md (18.4))

with the adversarial term only from step ``disc_start`` on; the patch discriminator then takes its
own hinge step (the ``discriminator`` phase, on the same micro-batch's reconstructions). The loop
is the shared :class:`pyramidflow.training.trainer.Trainer`: checkpoints in ``OUT/checkpoint-STEP``
(resume with ``latest``), TensorBoard and ``OUT/metrics.jsonl``, a non-finite loss stops the run
while the last good checkpoint stays. At the end the model, with per-channel latent statistics
measured on data, is saved to ``OUT/vae`` (loadable by ``load_vae``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pyramidflow.config import check_seed, to_dict
from pyramidflow.io.run_dir import claim_run_dir
from pyramidflow.models.vae import CausalVideoVAE, to_unit
from pyramidflow.models.vae.discriminator import PatchDiscriminator3D
from pyramidflow.models.vae.wan import WanVAE
from pyramidflow.models.vae.wan_init import pooled_copy_init
from pyramidflow.training.config import LoopConfig, OptimConfig
from pyramidflow.training.methods.base import MicroBatch, OptimizerSpec, PhaseLoss, TrainingMethod, mean_log
from pyramidflow.training.trainer import Trainer
from pyramidflow.training.vae.config import VAEModelConfig, VAETrainConfig
from pyramidflow.training.vae.data import as_clip, to_model_range
from pyramidflow.training.vae.losses import (
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    psnr,
    reconstruction_terms,
    ssim,
)


@torch.no_grad()
def evaluate(model: CausalVideoVAE, dataset, batch_size: int = 4) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of posterior-mean reconstructions over ``dataset``."""
    was_training = model.training
    model.eval()
    scores_p, scores_s = [], []
    for start in range(0, len(dataset), batch_size):
        x = to_model_range([as_clip(dataset[i]) for i in range(start, min(start + batch_size, len(dataset)))])
        x = x.to(model.device, model.dtype)
        mean, _ = model.encode_moments(x)
        recon, target = to_unit(model.decode_raw(mean)), to_unit(x)
        scores_p.append(psnr(recon, target))
        scores_s.append(ssim(recon, target))
    model.train(was_training)
    return {"psnr": torch.cat(scores_p).mean().item(), "ssim": torch.cat(scores_s).mean().item()}


@torch.no_grad()
def measure_latent_stats(model: CausalVideoVAE, dataset, max_clips: int = 64) -> tuple[list, list]:
    """Per-channel mean and std of posterior means over up to ``max_clips`` clips."""
    zs = []
    for i in range(min(max_clips, len(dataset))):
        x = to_model_range([as_clip(dataset[i])]).to(model.device, model.dtype)
        zs.append(model.encode_moments(x)[0].float().transpose(0, 1).flatten(1))  # (C, N)
    z = torch.cat(zs, dim=1)
    return z.mean(dim=1).tolist(), z.std(dim=1).clamp_min(1e-6).tolist()


class VAEMethod(TrainingMethod):
    """Reconstruction, KL, optional perceptual and adversarial terms; see the module docstring."""

    def __init__(self, cfg: VAETrainConfig, train_set, val_set=None) -> None:
        self.cfg, self.train_set, self.val_set = cfg, train_set, val_set
        self.vae = build_vae(cfg.model)  # what the losses call: CausalVideoVAE or the WanVAE adapter
        if cfg.model.init == "pooled":  # a resumed run then loads its checkpoint over this start
            clips = to_model_range([as_clip(train_set[i]) for i in range(min(16, len(train_set)))])
            pooled_copy_init(self.vae.vae, clips)
        self.trained = getattr(self.vae, "vae", self.vae)  # what is optimised and checkpointed
        self.discriminator = PatchDiscriminator3D() if cfg.loss.disc_weight > 0 else None
        self.perceptual = None
        if cfg.loss.perceptual_weight > 0:
            from pyramidflow.training.vae.perceptual import FeaturePerceptualLoss

            if not cfg.loss.perceptual_model:
                raise ValueError("loss.perceptual_weight > 0 needs loss.perceptual_model "
                                 "(a local model directory)")
            self.perceptual = FeaturePerceptualLoss(cfg.loss.perceptual_model)
        self._stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # micro-batch -> (x, recon) for D
        self.device = torch.device("cpu")

    def bind(self, trainer) -> None:
        self.device = trainer.accelerator.device

    # ------------------------------------------------------------------ roles
    def modules(self) -> dict[str, nn.Module]:
        roles = {"vae": self.trained}
        if self.discriminator is not None:
            roles["discriminator"] = self.discriminator
        return roles

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"perceptual": self.perceptual} if self.perceptual is not None else {}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.cfg
        specs = {"vae": OptimizerSpec(("vae",), OptimConfig(
            lr=c.lr, betas=(0.9, 0.99), weight_decay=c.weight_decay, warmup_steps=c.warmup_steps,
            schedule=c.lr_schedule, grad_clip=c.grad_clip or 0.0))}
        if self.discriminator is not None:
            specs["discriminator"] = OptimizerSpec(("discriminator",), OptimConfig(
                lr=c.loss.disc_lr, betas=(0.5, 0.9), weight_decay=0.01, warmup_steps=0, grad_clip=0.0))
        return specs

    def _adversarial(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.cfg.loss.disc_start

    def phases(self, step: int) -> list[str]:
        return ["vae", "discriminator"] if self._adversarial(step) else ["vae"]

    # ------------------------------------------------------------------- loss
    def loss(self, phase: str, batch: MicroBatch) -> PhaseLoss:
        n = len(batch.items)
        if phase == "discriminator":
            x, recon = self._stash.pop(batch.index)
            d_loss = hinge_d_loss(self.discriminator(x).float(), self.discriminator(recon).float())
            return PhaseLoss(d_loss * n, {"disc": mean_log(d_loss.detach(), n)})
        lc = self.cfg.loss
        x = to_model_range([as_clip(it) for it in batch.items]).to(self.device)
        recon, mean, logvar = self.vae(x)
        terms = reconstruction_terms(recon.float(), x, lc.l1, lc.mse, lc.ssim, lc.chroma)
        terms["kl"] = lc.kl * kl_divergence(mean.float(), logvar.float())
        if self.perceptual is not None:
            terms["perceptual"] = lc.perceptual_weight * self.perceptual(recon.float(), x)
        if self._adversarial(batch.step):
            terms["gan"] = lc.disc_weight * hinge_g_loss(self.discriminator(recon).float())
            self._stash[batch.index] = (x, recon.detach())
        loss = sum(terms.values())
        return PhaseLoss(loss * n, {k: mean_log(v.detach(), n) for k, v in terms.items()})

    # ------------------------------------------------------------- run hooks
    def validate(self, trainer, step: int, modules) -> dict[str, float] | None:
        if self.val_set is None or not len(self.val_set):
            return None
        return evaluate(self.vae, self.val_set)

    def finish(self, trainer) -> dict:
        """Measure latent statistics, save ``OUT/vae`` and ``final_metrics.json``."""
        out = trainer.out_dir
        source = self.val_set if self.val_set is not None and len(self.val_set) else self.train_set
        self.vae.set_latent_stats(*measure_latent_stats(self.vae, source))
        self.vae.save_pretrained(out / "vae", safe_serialization=True)  # wan: a diffusers AutoencoderKLWan
        result = {"step": trainer.step, "minutes": trainer.train_seconds / 60, "vae": str(out / "vae")}
        if self.val_set is not None and len(self.val_set):
            result.update({f"val_{k}": v for k, v in evaluate(self.vae, self.val_set).items()})
        (out / "final_metrics.json").write_text(json.dumps(result, indent=2))
        return result


CAUSAL_FIELDS = ("latent_channels", "block_out_channels", "spatial_down", "temporal_down", "layers_per_block",
                 "decoder_layers_per_block", "norm_groups", "block_type", "mid_blocks", "shortcut")


def build_vae(model: VAEModelConfig) -> nn.Module:
    """The autoencoder to train: :class:`CausalVideoVAE`, or diffusers' ``AutoencoderKLWan`` in its
    :class:`WanVAE` adapter (``kind: wan``; latents start unnormalised: mean 0, std 1)."""
    if model.init not in ("random", "pooled"):
        raise ValueError(f"unknown VAE init {model.init!r}; valid: random, pooled")
    if model.kind == "causal":
        if model.init != "random":
            raise ValueError("model.init: pooled is for kind: wan (the causal VAE has model.shortcut)")
        kwargs = {k: v for k, v in to_dict(model).items() if k in CAUSAL_FIELDS}
        return CausalVideoVAE(in_channels=3, **kwargs)
    if model.kind != "wan":
        raise ValueError(f"unknown VAE kind {model.kind!r}; valid: causal, wan")
    from diffusers import AutoencoderKLWan

    if len(model.temporal_down) != len(model.dim_mult) - 1:
        raise ValueError(f"a wan VAE needs one temporal_down entry per level after the first: dim_mult "
                         f"{list(model.dim_mult)} has {len(model.dim_mult) - 1}, got "
                         f"{list(model.temporal_down)}")
    c = model.latent_channels
    vae = AutoencoderKLWan(base_dim=model.base_dim, z_dim=c, dim_mult=list(model.dim_mult),
                           num_res_blocks=model.num_res_blocks, temperal_downsample=list(model.temporal_down),
                           latents_mean=[0.0] * c, latents_std=[1.0] * c, is_residual=model.residual,
                           # WanPipeline sizes its latents from these two: they must match the layers
                           scale_factor_temporal=2 ** sum(bool(t) for t in model.temporal_down),
                           scale_factor_spatial=2 ** (len(model.dim_mult) - 1))
    return WanVAE(vae)


def loop_config(cfg: VAETrainConfig, progress: bool = True) -> LoopConfig:
    """The shared loop's settings from the VAE's flat config."""
    return LoopConfig(seed=cfg.seed, batch_size=cfg.batch_size, max_steps=cfg.max_steps,
                      mixed_precision=cfg.mixed_precision, ema_decay=0.0,
                      checkpoint_every=cfg.checkpoint_every,
                      keep_last=cfg.keep_last, log_every=cfg.log_every, validate_every=cfg.val_every,
                      max_minutes=cfg.max_minutes or 0.0, progress=progress)


def train_vae(cfg: VAETrainConfig, train_set, val_set, resume: str | None = None, show_progress: bool = True,
              stop_at: int | None = None, overwrite: bool = False) -> dict:
    """Train; returns the final validation metrics and paths (and the last step's losses).

    ``resume``: "latest" or a checkpoint directory. ``stop_at``: end this run (with a checkpoint)
    at that step while the learning-rate schedule still spans ``cfg.max_steps``. ``overwrite``: a new
    run may replace the run in ``cfg.output_dir`` (else that is refused).
    """
    check_seed(cfg.seed)
    claim_run_dir(cfg.output_dir, resume, overwrite)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    method = VAEMethod(cfg, train_set, val_set)
    trainer = Trainer(method, train_set, loop_config(cfg, show_progress), out)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    return trainer.train(resume=resume, max_steps=stop_at)
