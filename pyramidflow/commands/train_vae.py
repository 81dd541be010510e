"""``pyramidflow train-vae``: train the causal video VAE from a YAML preset."""

from __future__ import annotations

import argparse
import sys

from pyramidflow.commands._parse import add_run_arguments, report, run_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-vae",
        help="train the causal video VAE (reconstruction + SSIM + KL, optional GAN / perceptual)",
        description="Train the project's causal 3D VAE. Writes OUT/checkpoint-STEP, OUT/logs "
        "(TensorBoard), OUT/metrics.jsonl and the final model to OUT/vae (loadable by cache-latents).",
    )
    add_run_arguments(p, "configs/vae-shapes-tiny.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.config import load_config
    from pyramidflow.training.methods.vae import train_vae
    from pyramidflow.training.trainer import TrainingDiverged
    from pyramidflow.training.vae.config import VAETrainConfig
    from pyramidflow.training.vae.data import build_vae_datasets

    cfg = load_config(VAETrainConfig, args.config, run_overrides(args, "max_steps"))
    train_set, val_set = build_vae_datasets(cfg.data)
    try:
        result = train_vae(cfg, train_set, val_set, resume=args.resume, show_progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"pyramidflow train-vae: {err}", file=sys.stderr)
        return 1
    report(result)
    return 0
