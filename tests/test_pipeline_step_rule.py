"""The sampling step rule travels with the model: Euler (Algorithm 1) or x0 re-noising for few-step
models (docs/maths.md section 9), in both temporal modes, from the saved config or per call."""

import pytest
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.pipelines import PipelineConfig, PyramidFlowPipeline

SHIPPED = "checkpoints/shapes-tiny"


def test_the_saved_rule_is_used_and_survives_saving(tmp_path):
    pipe = PyramidFlowPipeline.from_pretrained(SHIPPED)
    kw = dict(num_frames=2, num_inference_steps=(2, 2, 1), first_steps=(2, 2, 1), seed=3, output_type="pt",
              progress=False)
    prompt = "a red circle moving right on a black background"
    euler = pipe(prompt, **kw).latents
    pipe.config.sampling.step_rule = "x0_renoise"
    few = pipe(prompt, **kw).latents
    again = pipe(prompt, **kw).latents
    assert torch.equal(few, again) and not torch.allclose(few, euler, atol=1e-3)
    assert torch.equal(pipe(prompt, step_rule="euler", **kw).latents, euler)  # per call beats the saved one
    pipe.save_pretrained(tmp_path / "few")
    back = PyramidFlowPipeline.from_pretrained(tmp_path / "few")
    assert back.config.sampling.step_rule == "x0_renoise"
    assert torch.equal(back(prompt, **kw).latents, few)


def test_full_sequence_models_take_the_rule_too():
    pipe = PyramidFlowPipeline.from_pretrained(SHIPPED)
    pipe.config.temporal.mode = "full_sequence"
    kw = dict(num_frames=4, num_inference_steps=(1, 1, 1), seed=0, output_type="pt", progress=False)
    a = pipe("a blue square", **kw).latents
    b = pipe("a blue square", step_rule="x0_renoise", **kw).latents
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-3)


def test_an_unknown_rule_is_one_line():
    cfg = PipelineConfig()
    cfg.sampling.step_rule = "heun"
    with pytest.raises(PyramidflowError, match="unknown step rule 'heun'; valid: euler, x0_renoise"):
        cfg.check()
    pipe = PyramidFlowPipeline.from_pretrained(SHIPPED)
    with pytest.raises(PyramidflowError, match="unknown step rule 'dpm'"):
        pipe("a red circle", step_rule="dpm", progress=False)
