"""The shipped pyramidal conversion of the toy Wan teacher (checkpoints/wan-pyramidal-shapes): three
spatiotemporal stages over the teacher's latents, sampled 20-20-10, drawing the prompted clips."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyramidflow.demo import demo_prompts
from pyramidflow.eval import score_clips
from pyramidflow.pipelines import PyramidalWanPipeline

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
PYRAMIDAL, TEACHER = ROOT / "wan-pyramidal-shapes", ROOT / "wan-teacher-shapes"


def test_pyramidal_model_is_a_small_three_stage_conversion_of_the_teacher():
    index = json.loads((PYRAMIDAL / "model_index.json").read_text())
    assert index["_class_name"] == "PyramidalWanPipeline"
    size = sum(p.stat().st_size for p in PYRAMIDAL.rglob("*") if p.is_file())
    assert 0 < size <= 20 * 2**20, size
    assert not list(PYRAMIDAL.rglob("*.bin")) and not list(PYRAMIDAL.rglob("*.pt"))
    pipe = PyramidalWanPipeline.from_pretrained(PYRAMIDAL)
    cfg = pipe.config
    assert cfg.pyramid.num_stages == 3 and tuple(cfg.sampling.steps) == (20, 20, 10)
    assert (cfg.frames, cfg.height, cfg.width) == (17, 32, 32)
    teacher = json.loads((TEACHER / "transformer" / "config.json").read_text())
    mine = dict(pipe.transformer.config)
    for key in ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "patch_size"):
        assert json.loads(json.dumps(mine[key])) == teacher[key], key  # tuples as lists


@torch.no_grad()
def test_pyramidal_model_draws_the_prompted_clips():
    pipe = PyramidalWanPipeline.from_pretrained(PYRAMIDAL)
    prompts = demo_prompts()[:8]
    clips = [pipe(prompt, seed=seed, output_type="pt", progress=False).frames[0]
             for seed, prompt in enumerate(prompts)]
    assert clips[0].shape == (17, 3, 32, 32) and all(torch.isfinite(c).all() for c in clips)
    acc = score_clips(clips, prompts)["accuracy"]
    # chance: 1/7 colour, 1/3 shape, 1/4 direction; docs/BENCHMARKS.md has the full scores
    assert acc["color"] >= 0.85 and acc["shape"] >= 0.5 and acc["direction"] >= 0.5, acc
