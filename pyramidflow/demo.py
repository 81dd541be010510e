"""The demo: 32 fixed prompts through a shapes model, scored by the evaluator.

The prompts cover every colour, shape, compass direction, speed and background of the built-in
dataset (:func:`demo_prompts`). :func:`run_demo` samples them in one batch, writes one mp4 (and its
prompt) per clip, a contact sheet and ``metrics.json`` (evaluator accuracies, the descriptor
Fréchet distance to held-out real clips of the same size, timings).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.data.vocab import BACKGROUNDS, COLORS, MOVING_DIRECTIONS, SHAPES, SPEEDS, make_caption
from pyramidflow.eval import score_clips
from pyramidflow.io import write_clips
from pyramidflow.pipelines.pyramid_flow import PyramidFlowPipeline

NUM_PROMPTS = 32
REFERENCE_CLIPS = 256
REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "shapes-long"  # 32-frame clips (docs/BENCHMARKS.md, "Long clips")
DEFAULT_CONFIG = REPO / "configs" / "shapes-tiny.yaml"  # what --train retrains: the 4-frame model, minutes


def demo_prompts(count: int = NUM_PROMPTS) -> list[str]:
    """``count`` distinct prompts cycling through colours, shapes, directions, speeds, backgrounds
    and caption templates. The shape index moves one further every full round of colours, so every
    colour comes with every shape (within 18 prompts): a shape right for its colour cannot be a
    colour-to-shape shortcut."""
    colors, backgrounds, speeds = list(COLORS), list(BACKGROUNDS), list(SPEEDS)
    prompts = []
    for i in range(count):
        shape = SHAPES[(i + i // len(colors)) % len(SHAPES)]
        prompts.append(make_caption(colors[i % len(colors)], shape,
                                    backgrounds[(i // 3) % len(backgrounds)],
                                    MOVING_DIRECTIONS[i % len(MOVING_DIRECTIONS)],
                                    speeds[(i // 8) % len(speeds)], template=i // 8))
    return prompts


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit]


def reference_clips(pipe: PyramidFlowPipeline, count: int = REFERENCE_CLIPS) -> list[torch.Tensor]:
    """Real shapes clips at the pipeline's default size and motion scale (validation split)."""
    cfg = pipe.config
    bounce = cfg.travel_frames is not None and cfg.travel_frames < cfg.frames - 1
    ds = ShapesDataset(height=cfg.height, width=cfg.width, num_frames=cfg.frames, length=count, split="val",
                       bounce=bounce, travel_frames=cfg.travel_frames)
    return [ds[i]["video"] for i in range(count)]


def run_demo(pipe: PyramidFlowPipeline, out_dir: str | Path, prompts: list[str] | None = None,
             seed: int = 0, progress: bool = True, **call_kwargs) -> dict:
    """Sample, write and score the demo clips; returns the metrics written to ``metrics.json``."""
    out = Path(out_dir)
    prompts = demo_prompts() if prompts is None else prompts
    started = time.perf_counter()
    video = pipe(prompts, seed=seed, output_type="pt", progress=progress, **call_kwargs).frames.cpu()
    sample_seconds = time.perf_counter() - started
    names = [f"{i:02d}_{slug(p)}" for i, p in enumerate(prompts)]
    write_clips(out / "clips", video, prompts, pipe.config.fps, names, sheet=out / "sheet.png")
    scores = score_clips(list(video), prompts, reference_clips(pipe), travel_frames=pipe.config.travel_frames)
    per_clip = [{"prompt": r["prompt"], "seen": {k: r[k] for k in ("color", "shape", "direction",
                                                                   "background")},
                 **{f"{k}_correct": r[f"{k}_correct"] for k in ("color", "shape", "direction", "background")},
                 "intact": r["intact"]}
                for r in scores["results"]]
    metrics = {"accuracy": scores["accuracy"], "frechet": scores["frechet"], "count": len(prompts),
               "sample_seconds": round(sample_seconds, 2), "seed": seed, "clips": per_clip}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
