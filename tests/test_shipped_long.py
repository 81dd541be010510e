"""The shipped long-clip model (checkpoints/shapes-long, the demo's default): consistent with its
preset, 32-frame clips by default, and over 32 frames it keeps one whole object that follows the
prompt, on prompts that are not the demo's."""

from __future__ import annotations

from pathlib import Path

import torch
from shipped import CHECKPOINTS, check_draws_prompts, check_small_safe_folder

from pyramidflow.config import load_config, to_dict
from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.demo import DEFAULT_CHECKPOINT, demo_prompts
from pyramidflow.pipelines import PipelineConfig, PyramidFlowPipeline
from pyramidflow.training.config import TrainConfig

LONG = CHECKPOINTS / "shapes-long"
PRESET = Path(__file__).resolve().parents[1] / "configs" / "shapes-long.yaml"


def test_long_model_is_the_default_and_matches_its_preset():
    assert DEFAULT_CHECKPOINT.resolve() == LONG.resolve()
    check_small_safe_folder(LONG, "PyramidFlowPipeline")
    pipe = PyramidFlowPipeline.from_pretrained(LONG)
    assert pipe.config == PipelineConfig.from_train_dict(to_dict(load_config(TrainConfig, PRESET)))
    cfg = pipe.config
    assert cfg.frames == 32 and cfg.temporal.autoregressive and cfg.travel_frames == 3
    assert cfg.temporal.max_history is not None  # bounded history: the cost per frame stops growing


@torch.no_grad()
def test_long_model_keeps_a_whole_prompted_object_over_32_frames():
    """Six held-out captions (not the demo's), 32 frames each (the default): colour, shape and
    direction follow the prompt and the object is found, one piece, in every frame.
    docs/BENCHMARKS.md has the full long-clip scores (the stricter path test of the integrity
    check is not asked here)."""
    ds = ShapesDataset(height=32, width=32, num_frames=16, length=6, split="val", seed=101, bounce=True,
                       travel_frames=3)
    prompts = [ds[i]["text"] for i in range(6)]
    assert not set(prompts) & set(demo_prompts())
    pipe = PyramidFlowPipeline.from_pretrained(LONG)
    clips = list(pipe(prompts, seed=0, output_type="pt", progress=False).frames)
    results = check_draws_prompts(clips, prompts, frames=32, travel_frames=3)["results"]
    whole = [r["integrity"]["whole"] and r["integrity"]["single"] for r in results]
    assert sum(whole) >= 5, [r["integrity"] for r in results]
