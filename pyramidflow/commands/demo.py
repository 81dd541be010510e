"""``pyramidflow demo``: 32 prompts through the shipped long-clip model, scored; optionally retrain the
4-frame model first and sample that instead."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyramidflow.commands._parse import add_dtype_argument

DEMO_TRAIN_STEPS = 600  # the --train budget on configs/shapes-tiny.yaml (docs/BENCHMARKS.md)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="sample 32 fixed prompts from the shipped model and score them",
        description="Sample 32 fixed shapes prompts (every colour, shape, direction and background; every "
        "colour with every shape) from the shipped model checkpoints/shapes-long (32-frame clips), evaluate "
        "them and write OUT/clips/*.mp4 (+ prompts), OUT/sheet.png and OUT/metrics.json (accuracies, "
        "intact clips, Fréchet distance). --train first trains the 4-frame model from scratch with "
        f"configs/shapes-tiny.yaml for {DEMO_TRAIN_STEPS} steps (a short, fixed budget) into OUT/model "
        "and samples that.",
    )
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--train", action="store_true", help="train the 4-frame model from scratch first")
    p.add_argument("--train-steps", type=int, default=DEMO_TRAIN_STEPS, help="steps for --train")
    p.add_argument("--config", default=None,
                   help="preset for --train (default configs/shapes-tiny.yaml, pixel space; "
                   "configs/shapes-tiny-latent.yaml trains in a VAE's latent space)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --train (repeatable), e.g. --set vae=DIR")
    p.add_argument("--checkpoint", default=None, help="model to sample (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    add_dtype_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _train(out: Path, steps: int, quiet: bool, config: str | None, extra: list[str]) -> tuple[Path, float]:
    from pyramidflow.config import load_config
    from pyramidflow.demo import DEFAULT_CONFIG
    from pyramidflow.training.config import TrainConfig
    from pyramidflow.training.run import train_from_config

    preset = Path(config) if config else DEFAULT_CONFIG
    if not preset.is_file():
        raise FileNotFoundError(f"--train needs the preset {preset} (run from a source checkout)")
    model_dir = out / "model"
    overrides = [f"output_dir={model_dir}", f"loop.max_steps={steps}", "loop.validate_every=0",
                 "loop.max_minutes=0", f"loop.progress={str(not quiet).lower()}", "optim.warmup_steps=50",
                 *extra]
    cfg = load_config(TrainConfig, preset, overrides)
    started = time.perf_counter()
    train_from_config(cfg, validate=False, overwrite=True)  # --train always starts from scratch
    return model_dir / "pipeline", time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    import json

    from pyramidflow.commands._parse import parse_device, torch_dtype
    from pyramidflow.demo import DEFAULT_CHECKPOINT, run_demo
    from pyramidflow.pipelines import PyramidFlowPipeline

    out = Path(args.out)
    train_seconds = None
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if args.train:
        checkpoint, train_seconds = _train(out, args.train_steps, args.quiet, args.config, args.overrides)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no model at {checkpoint}: pass --checkpoint DIR or --train")
    pipe = PyramidFlowPipeline.from_pretrained(checkpoint, device=parse_device(args.device),
                                               torch_dtype=torch_dtype(args.dtype))
    metrics = run_demo(pipe, out, seed=args.seed, progress=not args.quiet)
    metrics["checkpoint"], metrics["dtype"] = str(checkpoint), args.dtype
    if train_seconds is not None:
        metrics["train_seconds"], metrics["train_steps"] = round(train_seconds, 1), args.train_steps
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    acc = metrics["accuracy"]
    keys = ("color", "shape", "direction", "speed", "background", "intact", "all")
    shown = ", ".join(f"{k} {acc[k]:.2f}" for k in keys if acc.get(k) is not None)
    fd = metrics["frechet"]
    print(f"demo: {metrics['count']} clips from {checkpoint} in {metrics['sample_seconds']:.1f} s -> {out}")
    print(f"accuracy: {shown}; Fréchet distance to real clips {fd:.3f}")
    return 0
