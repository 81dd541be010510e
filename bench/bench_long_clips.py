"""Long-clip quality: held-out prompts sampled at several lengths and judged by the evaluator.

The prompts are captions of the shapes validation split (never trained on as such), the reference
clips for the Fréchet distance are real clips of the same length and motion scale. For each length
the table gives the evaluator's accuracies, the share of intact clips (one whole object in every
frame, size stable, on one bouncing path: docs/evaluation.md) and the sampling time.

    python bench/bench_long_clips.py --checkpoint checkpoints/shapes-long [--frames 16 32]
        [--count 64] [--seed 0] [--out outputs/long-clips] [--travel-frames 3] [--max-history 3]

Writes the clips, contact sheets and a metrics.json per length under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.eval import score_clips
from pyramidflow.io import write_clips
from pyramidflow.pipelines import PyramidFlowPipeline

KEYS = ("color", "shape", "direction", "speed", "background", "intact", "all")


def held_out(cfg, frames: int, count: int, seed: int) -> tuple[list[str], list[torch.Tensor]]:
    bounce = cfg.travel_frames is not None and cfg.travel_frames < frames - 1
    ds = ShapesDataset(height=cfg.height, width=cfg.width, num_frames=frames, length=count, split="val",
                       seed=seed + 17, bounce=bounce, travel_frames=cfg.travel_frames)
    items = [ds[i] for i in range(count)]
    return [it["text"] for it in items], [it["video"] for it in items]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/shapes-long")
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32])
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="outputs/long-clips")
    p.add_argument("--travel-frames", type=int, default=None,
                   help="the motion scale to judge by (default: the model's own; 3 for checkpoints/shapes-tiny, "
                        "whose 4-frame clips covered a speed in 3 frames)")
    p.add_argument("--max-history", type=int, default=None,
                   help="history units kept while sampling (default: the model's saved window)")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="steps per stage (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="first-frame guidance (default: the model's)")
    p.add_argument("--video-guidance", type=float, default=None, help="later frames' guidance (default: the model's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = PyramidFlowPipeline.from_pretrained(args.checkpoint)
    cfg = pipe.config
    if args.travel_frames is not None:
        cfg.travel_frames = args.travel_frames
    if args.max_history is not None:
        cfg.temporal.max_history = args.max_history
    for field, value in (("steps", args.steps), ("guidance", args.guidance), ("video_guidance", args.video_guidance)):
        if value is not None:
            setattr(cfg.sampling, field, tuple(value) if field == "steps" else value)
    print(f"{args.checkpoint}: {args.count} held-out prompts, seed {args.seed}, travel_frames {cfg.travel_frames}, "
          f"max_history {cfg.temporal.max_history}, steps {tuple(cfg.sampling.steps)}, guidance "
          f"{cfg.sampling.guidance} / {cfg.sampling.video_guidance}")
    print("| frames | " + " | ".join(KEYS) + " | Fréchet | s per clip |")
    print("|---" * (len(KEYS) + 3) + "|")
    for frames in args.frames:
        prompts, reference = held_out(cfg, frames, args.count, args.seed)
        started, videos = time.perf_counter(), []
        for i in range(0, len(prompts), args.batch):
            out = pipe(prompts[i:i + args.batch], num_frames=frames, seed=args.seed + i, output_type="pt",
                       progress=False)
            videos.extend(out.frames.cpu())
        seconds = time.perf_counter() - started
        scores = score_clips(videos, prompts, reference, travel_frames=cfg.travel_frames)
        folder = Path(args.out) / f"frames-{frames}"
        write_clips(folder, videos, prompts, cfg.fps)
        acc = scores["accuracy"]
        (folder / "metrics.json").write_text(json.dumps({"accuracy": acc, "frechet": scores["frechet"],
                                                          "seconds": seconds, "count": len(prompts)}, indent=1))
        cells = " | ".join(f"{acc[k]:.2f}" if acc.get(k) is not None else "-" for k in KEYS)
        print(f"| {frames} | {cells} | {scores['frechet']:.3f} | {seconds / len(prompts):.2f} |", flush=True)


if __name__ == "__main__":
    main()
