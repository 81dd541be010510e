"""The shipped tiny model (checkpoints/shapes-tiny): complete, consistent with its preset, and it
still draws what it is asked for."""

from __future__ import annotations

import json

import torch

from pyramidflow.config import load_config, to_dict
from pyramidflow.demo import DEFAULT_CHECKPOINT, DEFAULT_CONFIG, demo_prompts
from pyramidflow.eval import score_clips
from pyramidflow.pipelines import PipelineConfig, PyramidFlowPipeline
from pyramidflow.training.config import TrainConfig


def test_shipped_model_matches_its_preset():
    cfg = load_config(TrainConfig, DEFAULT_CONFIG)
    index = json.loads((DEFAULT_CHECKPOINT / "model_index.json").read_text())
    assert index["_class_name"] == "PyramidFlowPipeline"
    weights = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.rglob("*.safetensors"))
    assert 0 < weights <= 20 * 2**20  # safetensors only, at most 20 MiB
    assert not list(DEFAULT_CHECKPOINT.rglob("*.bin")) and not list(DEFAULT_CHECKPOINT.rglob("*.pt"))
    pipe = PyramidFlowPipeline.from_pretrained(DEFAULT_CHECKPOINT)
    assert pipe.config == PipelineConfig.from_train_dict(to_dict(cfg))
    model = pipe.transformer.config
    assert list(model.patch_size) == list(cfg.model.patch_size) and model.num_layers == cfg.model.num_layers
    assert model.num_attention_heads * model.attention_head_dim == 128


def test_shipped_model_generates_the_prompted_colours_and_shapes():
    torch.manual_seed(0)
    pipe = PyramidFlowPipeline.from_pretrained(DEFAULT_CHECKPOINT)
    prompts = demo_prompts()[:8]
    video = pipe(prompts, seed=0, output_type="pt", progress=False).frames
    assert video.shape == (8, 4, 3, 32, 32) and torch.isfinite(video).all()
    acc = score_clips(list(video), prompts)["accuracy"]
    # the full demo measures colour 1.00 and shape >= 0.8 (docs/BENCHMARKS.md); a broken or
    # untrained checkpoint scores about 1/7 and 1/3
    assert acc["color"] >= 0.75 and acc["shape"] >= 0.5, acc
