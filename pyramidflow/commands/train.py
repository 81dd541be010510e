"""``pyramidflow train``: train a pyramidal flow model from a YAML preset (docs/training.md)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a pyramidal flow model (pixels or VAE latents, autoregressive or full-sequence)",
        description="Train a pyramidal flow-matching model. Writes OUT/config.yaml, OUT/checkpoint-STEP/ "
        "(model, EMA, optimizer, scheduler, RNG; atomic), OUT/logs (TensorBoard), OUT/samples/ "
        "(validation clips, contact sheets, evaluator scores) and the final pipeline in OUT/pipeline. "
        "Runs under `accelerate launch` / `torchrun` for several processes.",
    )
    p.add_argument("--config", required=True, help="YAML preset, e.g. configs/shapes-tiny.yaml")
    p.add_argument("--out", default=None, help="output directory (overrides output_dir)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set checkpoint_every=500 or "
                   "--set optim.lr=3e-4 (repeatable; a unique last part of a key is enough)")
    p.add_argument("--no-validate", action="store_true", help="skip validation sampling")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.config import load_config
    from pyramidflow.pipelines.training_run import train_from_config
    from pyramidflow.training.experiment import TrainConfig
    from pyramidflow.training.trainer import TrainingDiverged

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    if args.max_steps is not None:
        overrides.append(f"loop.max_steps={args.max_steps}")
    if args.quiet:
        overrides.append("loop.progress=false")
    cfg = load_config(TrainConfig, args.config, overrides)
    try:
        result = train_from_config(cfg, resume=args.resume, validate=not args.no_validate)
    except TrainingDiverged as err:
        print(f"pyramidflow train: {err}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    print(f"done: {shown}")
    return 0
