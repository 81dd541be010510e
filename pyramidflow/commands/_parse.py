"""Small argument parsers shared by subcommands."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from pyramidflow.errors import PyramidflowError


def int_list(text: str, name: str = "steps", allow_zero: bool = False) -> tuple[int, ...]:
    """'20,20,10' or '20-20-10' -> (20, 20, 10)."""
    parts = [p for p in re.split(r"[,\-\s]+", text.strip()) if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise PyramidflowError(f"--{name} must be integers like 20,20,10, got {text!r}") from None
    low = 0 if allow_zero else 1
    if not values or any(v < low for v in values):
        raise PyramidflowError(f"--{name} needs integers >= {low}, got {text!r}")
    return values


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # --dtype choices -> torch dtype names


def add_dtype_argument(p) -> None:
    """--dtype fp32|bf16: the precision the transformer computes in (the sampling state stays float32)."""
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="transformer precision (default fp32). bf16 halves the weights' memory and is faster "
                   "on GPUs and on CPUs with bf16 instructions (avx512_bf16, AMX) at width >= 384; on other "
                   "CPUs it is slower. The sampling state stays float32.")


def torch_dtype(name: str):
    """The torch dtype of a --dtype choice (torch imported here, not when the parser is built)."""
    import torch

    return getattr(torch, DTYPES[name])


def float_list(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in re.split(r"[,\s]+", text.strip()) if p)
    except ValueError:
        raise PyramidflowError(f"--{name} must be numbers like 0.6,0.3,0, got {text!r}") from None


def parse_device(name: str | None):
    """``--device`` as a ``torch.device`` (None: cuda if available, else cpu); one line for a name
    that is not a device or a device this machine lacks."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise PyramidflowError(f"--device {name!r} is not a device; valid: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise PyramidflowError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PyramidflowError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                                   f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PyramidflowError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise PyramidflowError(f"--device {name}: only cpu, cuda and mps are supported")
    return dev


def add_run_arguments(p, example: str, key_example: str) -> None:
    """The options every training command shares: --config, --out, --max-steps, --resume, --overwrite,
    --set (``key_example``: a key=value of this command's config, shown in the help)."""
    p.add_argument("--config", required=True, help=f"YAML preset, e.g. {example}")
    p.add_argument("--out", default=None, help="output directory (overrides output_dir)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--resume", default=None, help="'latest' (the newest undamaged checkpoint of --out) or "
                   "a checkpoint directory")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an output directory that "
                   "holds another run, removing that run's checkpoints and outputs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, e.g. --set {key_example} (repeatable; a unique last part "
                   "of a key is enough, e.g. --set checkpoint_every=500)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_overrides(args, max_steps_key: str) -> list[str]:
    """``--set`` items plus those implied by --out and --max-steps."""
    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    if args.max_steps is not None:
        overrides.append(f"{max_steps_key}={args.max_steps}")
    return overrides


def run_from_config(args, config_cls, command: str, run: Callable[..., dict]) -> int:
    """``train`` / ``distill``: the preset with --set, --out, --max-steps and --quiet applied, then
    ``run(cfg, resume=, validate=, overwrite=)`` through :func:`run_training`."""
    from pyramidflow.config import load_config

    overrides = run_overrides(args, "loop.max_steps")
    if args.quiet:
        overrides.append("loop.progress=false")
    cfg = load_config(config_cls, args.config, overrides)
    return run_training(command, lambda: run(cfg, resume=args.resume, validate=not args.no_validate,
                                             overwrite=args.overwrite))


def run_training(command: str, train: Callable[[], dict]) -> int:
    """Run ``train()`` for a training command: a ``done:`` line and 0; one line and 1 when the loss
    diverged; one line and 128 + the signal's number (130 SIGINT, 143 SIGTERM) when interrupted."""
    from pyramidflow.io.run_dir import is_main_process
    from pyramidflow.training.trainer import TrainingDiverged, TrainingInterrupted

    try:
        result = train()
    except (TrainingDiverged, TrainingInterrupted) as err:
        if is_main_process():
            print(f"pyramidflow {command}: {err}", file=sys.stderr)
        return 128 + err.signum if isinstance(err, TrainingInterrupted) else 1
    report(result)
    return 0



def report(result: dict) -> None:
    """One ``done:`` line (from the main process only when launched with several)."""
    from pyramidflow.io.run_dir import is_main_process

    if not is_main_process():
        return
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    print(f"done: {shown}")
