"""The paper's ablation at toy scale: pyramidal vs single-stage flow matching, same model, data and
wall-clock budget; evaluator scores and the descriptor Fréchet distance against training time.

    python bench/bench_ablation.py --minutes 20 --every 300 --out outputs/ablation

Both arms train configs/shapes-tiny.yaml (``--set`` overrides apply to both); the single-stage arm
sets ``pyramid.num_stages=1`` and samples with 30 steps (the pyramid's 10-10-10 makes the same
number of network evaluations, most of them at lower resolution). With ``--concurrent`` the two arms
run side by side with one thread each (same conditions); otherwise one after the other. Every
``--every`` steps each arm samples ``--prompts`` held-out prompts with its EMA weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ARMS = {
    "pyramidal": [],
    "single-stage": ["pyramid.num_stages=1", "sampling.steps=[30]"],
}


def command(arm: str, args, threads: int) -> list[str]:
    sets = [f"output_dir={Path(args.out) / arm}", f"loop.max_minutes={args.minutes}", "loop.max_steps=1000000",
            f"validate_every={args.every}", f"validation_prompts={args.prompts}", f"num_threads={threads}",
            "checkpoint_every=1000000", "optim.schedule=constant", *args.set, *ARMS[arm]]
    cmd = [sys.executable, "-m", "pyramidflow", "train", "--config", args.config, "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def table(out: Path) -> None:
    print("| arm | step | train min | color | shape | direction | all | Fréchet |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in ARMS:
        path = out / arm / "metrics.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            m = {k.removeprefix("val/"): v for k, v in json.loads(line).items()}
            if "color" not in m:  # a training log line, not a validation
                continue
            print(f"| {arm} | {m['step']} | {m['train_seconds'] / 60:.1f} | {m['color']:.2f} | {m['shape']:.2f} | "
                  f"{m['direction']:.2f} | {m['all']:.2f} | {m.get('frechet', float('nan')):.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shapes-tiny.yaml")
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per arm")
    p.add_argument("--every", type=int, default=300, help="validate every this many steps")
    p.add_argument("--prompts", type=int, default=32, help="held-out prompts per validation")
    p.add_argument("--concurrent", action="store_true", help="run both arms at once, one thread each")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for both arms")
    p.add_argument("--table-only", action="store_true", help="print the table of an earlier run")
    args = p.parse_args()
    out = Path(args.out)
    if not args.table_only:
        if args.concurrent:
            procs = [subprocess.Popen(command(arm, args, 1)) for arm in ARMS]
            codes = [proc.wait() for proc in procs]
        else:
            codes = [subprocess.call(command(arm, args, 2)) for arm in ARMS]
        if any(codes):
            raise SystemExit(f"a training run failed: exit codes {codes}")
    table(out)


if __name__ == "__main__":
    main()
