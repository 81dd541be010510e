"""``pyramidflow schedule``: each stage's window and sigma grid, natural and global units."""

from __future__ import annotations

import argparse
import json
import math


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "schedule",
        help="print the stage windows and sigma grids of a pyramid schedule",
        description="Print each stage's window and sigma grid in natural and global units "
        "(docs/maths.md sections 3-4); optionally plot both against the step.",
    )
    p.add_argument("--stages", type=int, default=3, help="number of stages K (default 3)")
    p.add_argument("--steps", default=None, help="steps per stage, e.g. 20,20,20 (default 20 each)")
    p.add_argument("--shift", type=float, default=1.0, help="shift of the grid inside each stage")
    p.add_argument("--gain", default="2", help="gain c of one level: 2 (spatial), 2.828 or 'st' (2x2x2)")
    p.add_argument("--ends", default=None, help="natural sigma at each stage end, e.g. 0.667,0.333,0")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a plot of both grids to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def _gain(text: str) -> float:
    from pyramidflow.errors import PyramidflowError

    if text.lower() in ("st", "spatiotemporal"):
        return 2.0 * math.sqrt(2.0)
    try:
        return float(text)
    except ValueError:
        raise PyramidflowError(f"--gain must be a number or 'st', got {text!r}") from None


def build(args: argparse.Namespace) -> dict:
    from pyramidflow.commands._parse import float_list, int_list
    from pyramidflow.pyramid import PyramidSchedule

    ends = float_list(args.ends, "ends") if args.ends else None
    schedule = PyramidSchedule(args.stages, stage_ends=ends, gain=_gain(args.gain), shift=args.shift)
    steps = int_list(args.steps) if args.steps else (20,) * schedule.num_stages
    steps = schedule.check_steps(steps)
    stages = []
    for i, n in enumerate(steps):
        natural = schedule.sigmas(i, n)
        glob = schedule.to_global(natural, i)
        start, end = schedule.windows[i]
        stages.append(
            {
                "stage": i,
                "levels_below_full": schedule.levels(i),
                "window_natural": [start, end],
                "window_global": [float(schedule.to_global(start, i)), float(schedule.to_global(end, i))],
                "steps": n,
                "sigmas_natural": natural.tolist(),
                "sigmas_global": glob.tolist(),
            }
        )
    return {
        "num_stages": schedule.num_stages,
        "gain": schedule.gain,
        "shift": schedule.shift,
        "stages": stages,
    }


def _table(result: dict) -> str:
    lines = [
        f"pyramid schedule: {result['num_stages']} stages, gain {result['gain']:.4f}, "
        f"shift {result['shift']:g}",
        "",
        f"{'stage':>5} {'levels':>6} {'natural window':>20} {'global window':>20} {'steps':>5}",
    ]
    for s in result["stages"]:
        nat = "{:.4f} -> {:.4f}".format(*s["window_natural"])
        glo = "{:.4f} -> {:.4f}".format(*s["window_global"])
        lines.append(f"{s['stage']:>5} {s['levels_below_full']:>6} {nat:>20} {glo:>20} {s['steps']:>5}")
    lines += ["", f"{'stage':>5} {'step':>4} {'sigma natural':>14} {'sigma global':>13} {'timestep':>9}"]
    for s in result["stages"]:
        for j, (n, g) in enumerate(zip(s["sigmas_natural"], s["sigmas_global"], strict=True)):
            lines.append(f"{s['stage']:>5} {j:>4} {n:>14.6f} {g:>13.6f} {1000 * n:>9.2f}")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    offset = 0
    for s in result["stages"]:
        x = list(range(offset, offset + len(s["sigmas_natural"])))
        line = ax.plot(x, s["sigmas_natural"], "-o", ms=2.5, label=f"stage {s['stage']} natural")[0]
        ax.plot(x, s["sigmas_global"], "--", color=line.get_color(), label=f"stage {s['stage']} global")
        offset += len(x) - 1
    ax.set_xlabel("step (stages concatenated)")
    ax.set_ylabel("sigma (1 = noise, 0 = data)")
    ax.set_title("pyramid schedule: natural (solid) and global (dashed) noise levels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    result = build(args)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    if args.plot and not args.json:
        print(f"\nplot written to {args.plot}")
    return 0
