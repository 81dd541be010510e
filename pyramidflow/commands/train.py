"""``pyramidflow train``: train a pyramidal flow model from a YAML preset (docs/training.md)."""

from __future__ import annotations

import argparse

from pyramidflow.commands._parse import add_run_arguments, run_from_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a pyramidal flow model (pixels or VAE latents, autoregressive or full-sequence)",
        description="Train a pyramidal flow-matching model. Writes OUT/config.yaml, OUT/checkpoint-STEP/ "
        "(model, EMA, optimizer, scheduler, RNG; atomic), OUT/logs (TensorBoard), OUT/samples/ "
        "(validation clips, contact sheets, evaluator scores) and the final pipeline in OUT/pipeline. "
        "An OUT holding another run is refused (--resume latest continues it, --overwrite replaces it); "
        "Ctrl-C or SIGTERM saves a checkpoint and exits. "
        "Runs under `accelerate launch` / `torchrun` for several processes.",
    )
    add_run_arguments(p, "configs/shapes-tiny.yaml", "optim.lr=3e-4")
    p.add_argument("--no-validate", action="store_true", help="skip validation sampling")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.training.config import TrainConfig
    from pyramidflow.training.run import train_from_config

    return run_from_config(args, TrainConfig, "train", train_from_config)
