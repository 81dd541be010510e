"""The shipped pyramidal conversion of the toy Wan teacher (checkpoints/wan-pyramidal-shapes): three
spatiotemporal stages over the teacher's latents, sampled 20-20-10, drawing the prompted clips."""

from __future__ import annotations

import json

import torch
from shipped import CHECKPOINTS, check_draws_prompts, check_small_safe_folder

from pyramidflow.demo import demo_prompts
from pyramidflow.pipelines import PyramidalWanPipeline

PYRAMIDAL, TEACHER = CHECKPOINTS / "wan-pyramidal-shapes", CHECKPOINTS / "wan-teacher-shapes"


def test_pyramidal_model_is_a_small_three_stage_conversion_of_the_teacher():
    check_small_safe_folder(PYRAMIDAL, "PyramidalWanPipeline")
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
    check_draws_prompts(clips, prompts)
