"""``pyramidflow eval``: judge every video in a folder against its same-named .txt prompt."""

from __future__ import annotations

import argparse
import json

COLUMNS = ("color", "shape", "direction", "speed", "background")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="judge generated shapes videos against their prompts",
        description="Evaluate every video/GIF/image in DIR against the prompt in its same-named .txt "
        "file with the weight-free shapes evaluator (docs/evaluation.md); print a table or JSON. Only "
        "shapes prompts (naming a circle, square or triangle) are scored: other footage is listed, "
        "not judged.",
    )
    p.add_argument("--videos", required=True, metavar="DIR", help="folder of videos with .txt prompts")
    p.add_argument("--travel-frames", type=_positive_int, default=None, metavar="N",
                   help="frames in which a named speed covers its share of the free range, as the "
                   "dataset's travel_frames (default: each clip's length - 1)")
    p.add_argument("--json", action="store_true", help="print per-video results and accuracies as JSON")
    p.set_defaults(func=run)


def _mark(value) -> str:
    return "-" if value is None else ("ok" if value else "NO")


def run(args: argparse.Namespace) -> int:
    from pyramidflow.eval import evaluate_folder

    report = evaluate_folder(args.videos, travel_frames=args.travel_frames)
    if args.json:
        print(json.dumps(report, indent=1, default=float))
        return 0
    rows = [("file", *COLUMNS, "intact", "consistency", "seen")]
    for r in report["results"]:
        if not r["shapes_prompt"]:
            rows.append((r["file"], *("-" for _ in COLUMNS), "-", "-", "(not a shapes prompt: not scored)"))
            continue
        seen = " ".join(str(r[k]) for k in ("color", "shape", "direction") if r[k]) + f" / {r['background']}"
        rows.append((r["file"], *(_mark(r[f"{k}_correct"]) for k in COLUMNS), _mark(r["intact"]),
                     f"{r['temporal_consistency']:.3f}", seen))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    acc = report["accuracy"]
    parts = [f"{k} {acc[k]:.3f}" for k in (*COLUMNS, "all", "intact") if acc[k] is not None]
    if acc["temporal_consistency"] is not None:
        parts.append(f"consistency {acc['temporal_consistency']:.3f}")
    if not acc["scored"]:
        print(f"none of the {acc['count']} videos has a shapes prompt (naming a circle, square or triangle): "
              "the shapes evaluator's scores would mean nothing for them")
    else:
        others = acc["count"] - acc["scored"]
        note = f" ({others} without a shapes prompt not scored)" if others else ""
        print(f"accuracy over {acc['scored']} videos{note}: " + ", ".join(parts))
    for s in report["skipped"]:
        print(f"skipped {s['file']}: {s['reason']}")
    return 0
