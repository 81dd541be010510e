"""``pyramidflow train-vae``: train the causal video VAE from a YAML preset."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-vae",
        help="train the causal video VAE (reconstruction + SSIM + KL, optional GAN / perceptual)",
        description="Train the project's causal 3D VAE. Writes OUT/checkpoint-STEP, OUT/logs "
        "(TensorBoard), OUT/metrics.jsonl and the final model to OUT/vae (loadable by cache-latents).",
    )
    p.add_argument("--config", required=True, help="YAML preset, e.g. configs/vae-shapes-tiny.yaml")
    p.add_argument("--out", default=None, help="output directory (overrides output_dir)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set loss.kl=1e-5 (repeatable)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.config import load_config
    from pyramidflow.training.vae_config import VAETrainConfig
    from pyramidflow.training.vae_data import build_vae_datasets
    from pyramidflow.training.vae_trainer import NonFiniteLossError, train_vae

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    cfg = load_config(VAETrainConfig, args.config, overrides)
    train_set, val_set = build_vae_datasets(cfg.data)
    try:
        result = train_vae(cfg, train_set, val_set, resume=args.resume, show_progress=not args.quiet)
    except NonFiniteLossError as err:
        print(f"pyramidflow train-vae: {err}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    print(f"done: {shown}")
    return 0
