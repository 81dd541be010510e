"""The shipped few-step student of the toy pyramidal Wan model (checkpoints/wan-fewstep-shapes):
distilled by distribution matching to 2-2-1 steps (five network evaluations, no guidance), drawing
the prompted clips."""

from __future__ import annotations

import json

import torch
from shipped import CHECKPOINTS, check_draws_prompts, check_small_safe_folder

from pyramidflow.demo import demo_prompts
from pyramidflow.pipelines import PyramidalWanPipeline

FEWSTEP, PYRAMIDAL = CHECKPOINTS / "wan-fewstep-shapes", CHECKPOINTS / "wan-pyramidal-shapes"


def test_fewstep_model_saves_its_schedule_and_matches_the_pyramidal_model():
    check_small_safe_folder(FEWSTEP, "PyramidalWanPipeline")
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
    check_draws_prompts(clips, prompts)
