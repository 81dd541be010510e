"""Cost of long clips: sampling time and memory per frame as the clip grows (4, 16, 32, 64 frames).

Autoregressive generation makes one unit (here one frame) at a time; each unit runs every stage's
steps on its own tokens and attends to the compressed history (docs/maths.md section 7). With all
history kept, the history a unit sees grows by one unit per frame (at the lowest level: a few
tokens), so the per-frame cost grows slowly; with a history window (``temporal.max_history``) it
stops growing once the window is full. Each configuration runs in a fresh process, so its peak
memory (resident set, ``ru_maxrss``) is its own.

    python bench/bench_long_video.py --checkpoint checkpoints/shapes-long [--frames 4 16 32 64]
        [--batch 1 8] [--threads 2] [--repeats 2]

Prints a markdown table: frames, batch, history cache, window, seconds, seconds per frame (per clip
frame: divided by frames x batch), peak RSS. The first configuration of each process is preceded by a
warm-up clip.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(args: argparse.Namespace) -> dict:
    import torch

    from pyramidflow.pipelines import PyramidFlowPipeline

    torch.set_num_threads(args.threads)
    pipe = PyramidFlowPipeline.from_pretrained(args.checkpoint)
    if args.window is not None:
        pipe.config.temporal.max_history = None if args.window == 0 else args.window
    prompts = ["a red circle moving slowly left on a black background"] * args.batch
    call = dict(num_frames=args.frames, seed=0, use_cache=not args.no_cache, progress=False, output_type="pt")
    pipe(prompts[:1], **{**call, "num_frames": 4})  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pipe(prompts, **call)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"frames": args.frames, "batch": args.batch, "cache": not args.no_cache,
            "window": pipe.config.temporal.max_history, "seconds": round(best, 3),
            "per_frame": round(best / (args.frames * args.batch), 4),
            "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/shapes-long")
    p.add_argument("--frames", type=int, nargs="+", default=[4, 16, 32, 64])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--windows", type=int, nargs="+", default=None,
                   help="history windows to compare (0: all history); default: the model's own")
    p.add_argument("--no-cache-too", action="store_true", help="also time without the history cache")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--window", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.frames, args.batch = args.frames[0], args.batch[0]
        print(json.dumps(one(args)))
        return
    print(f"checkpoint {args.checkpoint}, {args.threads} threads, best of {args.repeats}")
    print("| frames | batch | history cache | window | s | s per frame | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for window in args.windows or [None]:
        for cache in [True, False] if args.no_cache_too else [True]:
            for batch in args.batch:
                for frames in args.frames:
                    cmd = [sys.executable, __file__, "--one", "--checkpoint", args.checkpoint, "--frames",
                           str(frames), "--batch", str(batch), "--threads", str(args.threads), "--repeats",
                           str(args.repeats)]
                    cmd += ["--window", str(window)] if window is not None else []
                    cmd += [] if cache else ["--no-cache"]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"| {r['frames']} | {r['batch']} | {'on' if r['cache'] else 'off'} | "
                          f"{r['window'] or 'all'} | {r['seconds']:.2f} | {r['per_frame']:.4f} | "
                          f"{r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
