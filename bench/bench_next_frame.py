"""Teacher-forced next-frame accuracy of an autoregressive model: given the *true* first k frames of
held-out bouncing clips, generate frame k and measure how far the object lands from where it is in
the real clip (pixels, centroid distance); beside it the error of copying frame k - 1.

This separates "the model cannot predict the next frame" from "its own errors pile up" (exposure
bias): if teacher-forced errors are small, long clips fail by accumulation; if they are large, the
model has not learnt the dynamics.

    python bench/bench_next_frame.py --checkpoint checkpoints/shapes-tiny --k 1 2 3 [--count 24]
        [--seeds 3] [--video-guidance G]

Prints one row per k: median and mean error, the copy-the-last-frame baseline, clips where the
object was found in both; the generated step as a share of the true one along the true step
(median and quartiles: below 1 the object moves too little); with ``--seeds N > 1`` also the spread
of the generated position over N noise seeds (mean distance from their mean, px), which separates
an uncertain model (large spread) from a biased one (errors with little spread). Errors and the
along-track share are those of seed 0's frames.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.eval.detect import analyse_clip
from pyramidflow.models.vae import frames_to_model, model_to_frames
from pyramidflow.models.velocity import UnitVelocity
from pyramidflow.pipelines import PyramidFlowPipeline
from pyramidflow.pipelines.autoregressive import generate_units
from pyramidflow.pipelines.guidance import GuidedUnitVelocity
from pyramidflow.pyramid.steps import step_rule


def centroid(frame: torch.Tensor):
    """(x, y) of the object in one frame (1, 3, H, W) in [0, 1], or None."""
    obj = analyse_clip(frame)[2][0]
    return (obj.x, obj.y) if obj.detected else None


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/shapes-tiny")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--frames", type=int, default=16, help="length of the held-out clips")
    p.add_argument("--travel-frames", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=1, help="noise seeds per clip (spread column when > 1)")
    p.add_argument("--video-guidance", type=float, default=None, help="later frames' guidance (default: the model's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = PyramidFlowPipeline.from_pretrained(args.checkpoint)
    cfg, s = pipe.config, pipe.config.sampling
    if not cfg.temporal.autoregressive:
        raise SystemExit("this measures autoregressive models")
    if max(args.k) >= args.frames:
        raise SystemExit(f"k must stay below --frames {args.frames}")
    ds = ShapesDataset(height=cfg.height, width=cfg.width, num_frames=args.frames, length=args.count,
                       split="val", seed=17, bounce=True, travel_frames=args.travel_frames)
    items = [ds[i] for i in range(args.count)]
    prompts, clips = [it["text"] for it in items], [it["video"] for it in items]  # (T, 3, H, W) each
    x = frames_to_model(torch.stack(clips))  # (B, C, T, H, W)
    text, null = pipe.encode_prompt(prompts)
    both = torch.cat([null.expand_as(text), text])
    later = args.video_guidance if args.video_guidance is not None else (
        s.video_guidance if s.video_guidance is not None else s.guidance)
    print(f"{args.checkpoint}: {args.count} held-out clips of {args.frames} frames, travel_frames "
          f"{args.travel_frames}")
    print("| k (true frames given) | median error px | mean error px | copy frame k-1: median px | "
          "step share: median [q25, q75] | seed spread px | clips |")
    print("|---|---|---|---|---|---|---|")
    fn = GuidedUnitVelocity(UnitVelocity(pipe.transformer, both, pipe.schedule.num_stages), s.guidance, later)
    unit = (len(prompts), x.shape[1], 1, x.shape[3], x.shape[4])
    for k in args.k:
        made = []  # per seed: (B, 2) centroids, NaN where nothing was found
        for seed in range(args.seeds):
            out = generate_units(fn, pipe.schedule, pipe.transform, unit, k + 1, s.steps, s.first_steps,
                                 torch.Generator().manual_seed(seed), [x[:, :, i:i + 1] for i in range(k)],
                                 max_history=cfg.temporal.max_history, step_rule=step_rule(s.step_rule))
            gen = model_to_frames(out[:, :, k:k + 1])  # (B, 1, 3, H, W)
            made.append([centroid(gen[b]) or (np.nan, np.nan) for b in range(len(clips))])
        made = np.array(made, dtype=float)  # (seeds, B, 2)
        true = np.array([centroid(c[k:k + 1]) or (np.nan, np.nan) for c in clips], dtype=float)  # (B, 2)
        last = np.array([centroid(c[k - 1:k]) or (np.nan, np.nan) for c in clips], dtype=float)
        errors = np.linalg.norm(made[0] - true, axis=-1)
        ok = np.isfinite(errors)
        copy = np.linalg.norm(true - last, axis=-1)
        step = true - last  # (B, 2)
        moving = ok & (np.linalg.norm(step, axis=-1) > 0.5)
        share = ((made[0] - last) * step).sum(-1)[moving] / (step * step).sum(-1)[moving]
        spread = "-"
        if args.seeds > 1:
            found = np.isfinite(made).all(axis=(0, 2))
            centre = made[:, found].mean(axis=0, keepdims=True)
            spread = f"{np.linalg.norm(made[:, found] - centre, axis=-1).mean():.2f}"
        q25, q50, q75 = np.quantile(share, [0.25, 0.5, 0.75])
        print(f"| {k} | {np.median(errors[ok]):.2f} | {np.mean(errors[ok]):.2f} | {np.nanmedian(copy):.2f} | "
              f"{q50:.2f} [{q25:.2f}, {q75:.2f}] | {spread} | {int(ok.sum())}/{len(clips)} |", flush=True)

if __name__ == "__main__":
    main()
