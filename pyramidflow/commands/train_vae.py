"""``pyramidflow train-vae``: train the causal video VAE from a YAML preset."""

from __future__ import annotations

import argparse

from pyramidflow.commands._parse import add_run_arguments, run_overrides, run_training


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-vae",
        help="train the causal video VAE (reconstruction + SSIM + KL, optional GAN / perceptual)",
        description="Train the project's causal 3D VAE. Writes OUT/checkpoint-STEP, OUT/logs "
        "(TensorBoard), OUT/metrics.jsonl and the final model to OUT/vae (loadable by cache-latents).",
    )
    add_run_arguments(p, "configs/vae-shapes-tiny.yaml", "lr=3e-4")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.config import load_config
    from pyramidflow.training.methods.vae import train_vae
    from pyramidflow.training.vae.config import VAETrainConfig
    from pyramidflow.training.vae.data import build_vae_datasets

    cfg = load_config(VAETrainConfig, args.config, run_overrides(args, "max_steps"))
    train_set, val_set = build_vae_datasets(cfg.data)
    return run_training("train-vae", lambda: train_vae(
        cfg, train_set, val_set, resume=args.resume, show_progress=not args.quiet, overwrite=args.overwrite))
