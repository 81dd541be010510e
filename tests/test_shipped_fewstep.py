"""The shipped few-step student of the toy pyramidal Wan model (checkpoints/wan-fewstep-shapes):
distilled by distribution matching to 2-2-1 steps (five network evaluations, no guidance), drawing
the prompted clips."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyramidflow.demo import demo_prompts
from pyramidflow.eval import score_clips
from pyramidflow.pipelines import PyramidalWanPipeline

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
FEWSTEP, PYRAMIDAL = ROOT / "wan-fewstep-shapes", ROOT / "wan-pyramidal-shapes"


def test_fewstep_model_saves_its_schedule_and_matches_the_pyramidal_model():
    index = json.loads((FEWSTEP / "model_index.json").read_text())
    assert index["_class_name"] == "PyramidalWanPipeline"
    size = sum(p.stat().st_size for p in FEWSTEP.rglob("*") if p.is_file())
    assert 0 < size <= 20 * 2**20, size
    assert not list(FEWSTEP.rglob("*.bin")) and not list(FEWSTEP.rglob("*.pt"))
    pipe = PyramidalWanPipeline.from_pretrained(FEWSTEP)
    s = pipe.config.sampling
    assert tuple(s.steps) == (2, 2, 1) and s.guidance == 1.0 and s.step_rule == "x0_renoise"
    assert (pipe.config.frames, pipe.config.height, pipe.config.width) == (17, 32, 32)
    base = json.loads((PYRAMIDAL / "transformer" / "config.json").read_text())
    mine = json.loads((FEWSTEP / "transformer" / "config.json").read_text())
    for key in ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "patch_size"):
        assert mine[key] == base[key], key


@torch.no_grad()
def test_fewstep_model_draws_the_prompted_clips_in_five_evaluations():
    pipe = PyramidalWanPipeline.from_pretrained(FEWSTEP)
    calls = []
    pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    prompts = demo_prompts()[:8]
    clips = [pipe(prompt, seed=seed, output_type="pt", progress=False).frames[0]
             for seed, prompt in enumerate(prompts)]
    assert len(calls) == 5 * len(prompts)  # 2-2-1 without guidance: one pass per step
    assert clips[0].shape == (17, 3, 32, 32) and all(torch.isfinite(c).all() for c in clips)
    acc = score_clips(clips, prompts)["accuracy"]
    # chance: 1/7 colour, 1/3 shape, 1/4 direction; docs/BENCHMARKS.md has the full scores
    assert acc["color"] >= 0.85 and acc["shape"] >= 0.5 and acc["direction"] >= 0.5, acc
