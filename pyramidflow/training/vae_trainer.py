"""Training loop of the causal video VAE (``pyramidflow train-vae``).

Objective per step (Pyramid Flow paper Sec. 4, VAE training):
    L = l1*|x - x^| + mse*(x - x^)^2 + ssim*(1 - SSIM) + kl*KL + perceptual*P + disc_weight*G_hinge
with the adversarial term only after ``disc_start`` steps; the patch discriminator then takes its own
hinge step. Conventions shared with the main trainer: ``OUT/checkpoint-STEP`` via
:mod:`pyramidflow.training.checkpoint` (resume with ``latest``), TensorBoard logs in ``OUT/logs``,
one JSON line per log step in ``OUT/metrics.jsonl``, a tqdm bar, and a non-finite loss stops the
run with a clear message while the last good checkpoint stays untouched. The trained model (with
per-channel latent statistics measured on data) is saved to ``OUT/vae``, loadable by ``load_vae``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from tqdm import tqdm

from pyramidflow.config import to_dict
from pyramidflow.models.vae import CausalVideoVAE
from pyramidflow.models.vae.discriminator import PatchDiscriminator3D
from pyramidflow.training.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from pyramidflow.training.distributed import make_accelerator
from pyramidflow.training.vae_config import VAETrainConfig
from pyramidflow.training.vae_data import as_clip, clip_batches, to_model_range
from pyramidflow.training.vae_losses import (
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    psnr,
    reconstruction_terms,
    ssim,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@torch.no_grad()
def evaluate(model: CausalVideoVAE, dataset, batch_size: int = 4) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of posterior-mean reconstructions over ``dataset``."""
    model.eval()
    scores_p, scores_s = [], []
    for start in range(0, len(dataset), batch_size):
        x = to_model_range([as_clip(dataset[i]) for i in range(start, min(start + batch_size, len(dataset)))])
        x = x.to(model.device, model.dtype)
        mean, _ = model.encode_moments(x)
        recon = ((model.decode_raw(mean).float() + 1) / 2).clamp(0, 1)
        target = (x.float() + 1) / 2
        scores_p.append(psnr(recon, target))
        scores_s.append(ssim(recon, target))
    model.train()
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


def _build(cfg: VAETrainConfig):
    model = CausalVideoVAE(in_channels=3, **to_dict(cfg.model))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    sched = get_scheduler(
        "cosine" if cfg.lr_schedule == "cosine" else "constant_with_warmup",
        opt,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.max_steps,
    )
    models, opts, scheds = {"vae": model}, {"vae": opt}, {"vae": sched}
    if cfg.loss.disc_weight > 0:
        disc = PatchDiscriminator3D()
        models["discriminator"] = disc
        opts["discriminator"] = torch.optim.AdamW(disc.parameters(), lr=cfg.loss.disc_lr, betas=(0.5, 0.9))
    return models, opts, scheds


def train_vae(
    cfg: VAETrainConfig,
    train_set,
    val_set,
    resume: str | None = None,
    show_progress: bool = True,
    stop_at: int | None = None,
) -> dict:
    """Train; returns the final validation metrics and paths.

    ``resume``: "latest" or a checkpoint directory. ``stop_at``: end this run (with a checkpoint)
    at that step while the learning-rate schedule still spans ``cfg.max_steps``.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    accelerator = make_accelerator(cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    models, opts, scheds = _build(cfg)
    step, position = 0, None
    found = resolve_checkpoint(out, resume) if resume else None
    if found is not None:
        info = load_checkpoint(found, models, opts, scheds)
        step, position = info.step, info.data_position
        print(f"resumed from {found} at step {step}")
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    model, opt = accelerator.prepare(models["vae"], opts["vae"])
    disc = models.get("discriminator")
    if disc is not None:
        disc, d_opt = accelerator.prepare(disc, opts["discriminator"])
    vae = accelerator.unwrap_model(model)
    perceptual = None
    if cfg.loss.perceptual_weight > 0:
        from pyramidflow.training.vae_perceptual import FeaturePerceptualLoss

        if not cfg.loss.perceptual_model:
            raise ValueError(
                "loss.perceptual_weight > 0 needs loss.perceptual_model (a local model directory)"
            )
        perceptual = FeaturePerceptualLoss(cfg.loss.perceptual_model).to(accelerator.device)

    writer = _tensorboard(out / "logs")
    batches = clip_batches(train_set, cfg.batch_size, cfg.seed, position)
    started = time.monotonic()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not show_progress, desc="train-vae")
    last: dict[str, float] = {}
    while step < cfg.max_steps:
        x, position = next(batches)
        x = x.to(accelerator.device)
        with accelerator.autocast():
            recon, mean, logvar = model(x)
            terms = reconstruction_terms(recon.float(), x, cfg.loss.l1, cfg.loss.mse, cfg.loss.ssim)
            terms["kl"] = cfg.loss.kl * kl_divergence(mean.float(), logvar.float())
            if perceptual is not None:
                terms["perceptual"] = cfg.loss.perceptual_weight * perceptual(recon.float(), x)
            adversarial = disc is not None and step >= cfg.loss.disc_start
            if adversarial:
                terms["gan"] = cfg.loss.disc_weight * hinge_g_loss(disc(recon).float())
        loss = sum(terms.values())
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {step + 1} (terms: "
                f"{ {k: v.item() for k, v in terms.items()} }); stopped, the last good checkpoint in "
                f"{out} is kept; lower lr or use mixed_precision=no"
            )
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        scheds["vae"].step()
        if adversarial:
            with accelerator.autocast():
                d_loss = hinge_d_loss(disc(x).float(), disc(recon.detach()).float())
            d_opt.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            d_opt.step()
            terms["disc"] = d_loss
        step += 1
        bar.update(1)
        out_of_time = (cfg.max_minutes is not None and time.monotonic() - started > 60 * cfg.max_minutes) or (
            stop_at is not None and step >= stop_at
        )
        if step % cfg.log_every == 0 or step == cfg.max_steps or out_of_time:
            last = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
            last["lr"] = scheds["vae"].get_last_lr()[0]
            _log(out, writer, step, last, started)
            bar.set_postfix(loss=f"{last['loss']:.4f}")
        if step % cfg.val_every == 0 and val_set is not None and len(val_set):
            _log(out, writer, step, {f"val/{k}": v for k, v in evaluate(vae, val_set).items()}, started)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or out_of_time:
            save_checkpoint(
                out, step, models, opts, scheds, data_position=position, extra=last, keep_last=cfg.keep_last
            )
        if out_of_time:
            break
    bar.close()
    return _finish(out, vae, train_set, val_set, writer, step, started)


def _finish(out: Path, vae: CausalVideoVAE, train_set, val_set, writer, step: int, started: float) -> dict:
    stats_source = val_set if val_set is not None and len(val_set) else train_set
    mean, std = measure_latent_stats(vae, stats_source)
    vae.set_latent_stats(mean, std)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    result = {"step": step, "minutes": (time.monotonic() - started) / 60, "vae": str(out / "vae")}
    if val_set is not None and len(val_set):
        result.update({f"val_{k}": v for k, v in evaluate(vae, val_set).items()})
        _log(out, writer, step, {"val/psnr": result["val_psnr"], "val/ssim": result["val_ssim"]}, started)
    (out / "final_metrics.json").write_text(json.dumps(result, indent=2))
    if writer is not None:
        writer.close()
    return result


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but logging must never stop training
        return None
    return SummaryWriter(str(path))


def _log(out: Path, writer, step: int, values: dict[str, float], started: float) -> None:
    record = {"step": step, "minutes": round((time.monotonic() - started) / 60, 3), **values}
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    if writer is not None:
        for key, value in values.items():
            if isinstance(value, float) and math.isfinite(value):
                writer.add_scalar(key, value, step)
