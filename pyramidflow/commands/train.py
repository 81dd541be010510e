"""``pyramidflow train``: train a pyramidal flow model from a YAML preset (docs/training.md)."""

from __future__ import annotations

import argparse
import sys

from pyramidflow.commands._parse import add_run_arguments, report, run_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a pyramidal flow model (pixels or VAE latents, autoregressive or full-sequence)",
        description="Train a pyramidal flow-matching model. Writes OUT/config.yaml, OUT/checkpoint-STEP/ "
        "(model, EMA, optimizer, scheduler, RNG; atomic), OUT/logs (TensorBoard), OUT/samples/ "
        "(validation clips, contact sheets, evaluator scores) and the final pipeline in OUT/pipeline. "
        "Runs under `accelerate launch` / `torchrun` for several processes.",
    )
    add_run_arguments(p, "configs/shapes-tiny.yaml")
    p.add_argument("--no-validate", action="store_true", help="skip validation sampling")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.config import load_config
    from pyramidflow.training.config import TrainConfig
    from pyramidflow.training.run import train_from_config
    from pyramidflow.training.trainer import TrainingDiverged

    overrides = run_overrides(args, "loop.max_steps")
    if args.quiet:
        overrides.append("loop.progress=false")
    cfg = load_config(TrainConfig, args.config, overrides)
    try:
        result = train_from_config(cfg, resume=args.resume, validate=not args.no_validate)
    except TrainingDiverged as err:
        print(f"pyramidflow train: {err}", file=sys.stderr)
        return 1
    report(result)
    return 0
