"""``pyramidflow data``: check a video collection, preview a dataset, write shapes clips to disk."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="check, preview or export video datasets",
        description="Tools for the video datasets of pyramidflow.data (see docs/data.md).",
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    c = sub.add_parser("check", help="decode every entry of a manifest or folder and report",
                       description="Decode the first clip of every file; report how many are usable "
                       "and why the others were skipped. Exit status 1 when none is usable.")
    _source(c, shapes=False)
    _clip(c)
    c.add_argument("--json", action="store_true", help="print {ok, skipped, reasons, files} as JSON")
    c.set_defaults(func=run_check)

    v = sub.add_parser("preview", help="contact sheet of sample clips with captions",
                       description="Draw a PNG grid: one row of frames per sample clip, caption above.")
    _source(v, shapes=True)
    _clip(v)
    v.add_argument("--out", required=True, help="PNG file to write")
    v.add_argument("--num", type=int, default=8, help="number of clips (default 8)")
    v.add_argument("--seed", type=int, default=0, help="shapes seed (default 0)")
    v.set_defaults(func=run_preview)

    m = sub.add_parser("make-shapes", help="write shapes clips as video files with .txt captions",
                       description="Render shapes clips to OUT/NNNNN.mp4 (or .gif/.png) with "
                       "same-named .txt captions and OUT/manifest.jsonl.")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--num", type=int, default=16, help="number of clips (default 16)")
    m.add_argument("--frames", type=int, default=16, help="frames per clip (1 writes images)")
    m.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    m.add_argument("--fps", type=float, default=8.0, help="frame rate (default 8)")
    m.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    m.add_argument("--split", default="train", help="train, val or holdout (default train)")
    m.add_argument("--format", default="mp4", choices=["mp4", "gif"], help="video format (default mp4)")
    m.set_defaults(func=run_make_shapes)


def _source(p: argparse.ArgumentParser, shapes: bool) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--manifest", help="JSONL/CSV manifest of {video, text} rows")
    group.add_argument("--folder", help="folder of videos/images with same-named .txt captions")
    if shapes:
        group.add_argument("--dataset", choices=["shapes"], help="the built-in procedural dataset")


def _clip(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--size", type=int, default=64, help="output side after resize + centre crop (default 64)")
    p.add_argument("--fps", type=float, default=None, help="resample to this rate (default: native)")


def _video_dataset(args: argparse.Namespace):
    if args.manifest:
        from pyramidflow.data.manifest import ManifestDataset

        return ManifestDataset(args.manifest, frames=args.frames, size=args.size, fps=args.fps)
    from pyramidflow.data.video import VideoFolderDataset

    return VideoFolderDataset(args.folder, frames=args.frames, size=args.size, fps=args.fps)


def run_check(args: argparse.Namespace) -> int:
    import warnings

    from pyramidflow.data.video import SkippedInputWarning

    with warnings.catch_warnings():  # the report below names every skipped file once
        warnings.simplefilter("ignore", SkippedInputWarning)
        report = _video_dataset(args).check()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        total = report["ok"] + report["skipped"]
        print(f"{report['ok']} of {total} entries usable ({args.frames} frames at {args.size}x{args.size}), "
              f"{report['skipped']} skipped")
        for reason, count in sorted(report["reasons"].items()):
            print(f"  {count:6d}  {reason}")
        for item in report["files"]:
            detail = f" ({item['detail']})" if item["detail"] else ""
            print(f"  skipped {item['path']}: {item['reason']}{detail}")
    return 0 if report["ok"] > 0 else 1


def run_preview(args: argparse.Namespace) -> int:
    from pyramidflow.errors import PyramidflowError
    from pyramidflow.io import contact_sheet

    if args.num < 1:
        raise PyramidflowError(f"--num must be >= 1, got {args.num}")
    if args.dataset == "shapes":
        from pyramidflow.data.shapes import ShapesDataset

        data = ShapesDataset(args.size, args.frames, seed=args.seed, length=args.num)
    else:
        data = _video_dataset(args)
    items, seen = [], set()
    for i in range(len(data)):  # distinct clips: a skipped file's slot repeats the next good clip
        item = data[i]
        key = (item.get("path"), float(item["meta"].get("start", i)), item["text"])
        if key not in seen:
            seen.add(key)
            items.append(item)
        if len(items) == args.num:
            break
    path = contact_sheet([it["video"] for it in items], [it["text"] for it in items], args.out)
    print(f"wrote {path} ({len(items)} clips)")
    return 0


def run_make_shapes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pyramidflow.data.manifest import write_manifest
    from pyramidflow.data.shapes import ShapesDataset
    from pyramidflow.io import write_video

    data = ShapesDataset(args.size, args.frames, args.seed, args.num, args.split, fps=args.fps)
    out = Path(args.out)
    suffix = ".png" if args.frames == 1 else f".{args.format}"
    rows = []
    for i in range(len(data)):
        item = data[i]
        name = f"{i:05d}{suffix}"
        write_video(out / name, item["video"], fps=args.fps)
        (out / name).with_suffix(".txt").write_text(item["text"] + "\n", encoding="utf-8")
        rows.append({"video": name, "text": item["text"]})
    write_manifest(out / "manifest.jsonl", rows)
    print(f"wrote {len(rows)} clips and {out / 'manifest.jsonl'}")
    return 0
