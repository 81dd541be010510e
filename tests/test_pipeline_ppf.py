"""A patchification pyramid (docs/maths.md section 9) end to end: the path, sampling stage by stage at
full resolution, the losses, `pyramidflow train` (conversion, resume) and `pyramidflow sample`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyramidflow.cli import main
from pyramidflow.config import load_config
from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PPFDiT, PyramidDiT
from pyramidflow.pipelines import PyramidalWanPipeline, PyramidFlowPipeline
from pyramidflow.pipelines.guidance import guided_velocity
from pyramidflow.pyramid import (
    IdentityTransform,
    PyramidConfig,
    PyramidSchedule,
    TemporalConfig,
    haar_jump,
    identity_transition,
    sample,
    training_sample,
    x0_renoise_step,
)
from pyramidflow.pyramid.steps import euler_step
from pyramidflow.training.config import TrainConfig
from pyramidflow.training.flow_loss import pyramid_flow_loss
from pyramidflow.training.packed_loss import packed_flow_loss

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1)
LEVELS = [[1, 8, 8], [1, 4, 4], [1, 2, 2]]


def _ppf(seed=0):
    torch.manual_seed(seed)
    return PPFDiT.from_transformer(PyramidDiT(**TINY).eval(), LEVELS)


def test_the_config_builds_meeting_windows_an_identity_transform_and_transition():
    schedule, transform = PyramidConfig(num_stages=3, stage_ends=(0.8, 0.5, 0.0), patchify=True).build()
    assert isinstance(transform, IdentityTransform) and schedule.gain == 1.0
    assert schedule.windows == [(1.0, 0.8), (0.8, 0.5), (0.5, 0.0)]
    assert PyramidConfig(patchify=True).transition() is identity_transition
    assert PyramidConfig().transition() is haar_jump
    assert transform.shape_at((2, 4, 3, 8, 8), 2) == (2, 4, 3, 8, 8)


def test_the_training_path_is_plain_flow_matching_in_the_stage_window():
    schedule, transform = PyramidConfig(num_stages=3, patchify=True).build()
    x0 = torch.randn(64, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = training_sample(x0, schedule, transform, generator=torch.Generator().manual_seed(1))
    assert set(ts.stage.tolist()) == {0, 1, 2}
    for i in range(64):
        start, end = schedule.windows[int(ts.stage[i])]
        s = float(ts.sigma[i])
        assert end <= s <= start
        eps = ts.target[i] + x0[i]  # target eps - x0, and the point (1 - s) x0 + s eps
        torch.testing.assert_close(ts.x_t[i], (1 - s) * x0[i] + s * eps, rtol=0, atol=1e-12)
        assert ts.x_t[i].shape == x0[i].shape  # full resolution at every stage


class _Recorder(torch.nn.Module):
    """The model, recording the shape and patch level of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    @property
    def config(self):
        return self.model.config

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=True, patch_level=None):
        self.calls.append((tuple(hidden_states.shape), patch_level, float(timestep.flatten()[0])))
        return self.model(hidden_states, timestep, encoder_hidden_states, return_dict=return_dict,
                          patch_level=patch_level)


@pytest.mark.parametrize("rule", [euler_step, x0_renoise_step])
def test_sampling_runs_stage_i_at_patch_level_i_at_full_resolution(rule):
    schedule, transform = PyramidConfig(num_stages=3, stage_ends=(0.7, 0.4, 0.0), patchify=True).build()
    model = _Recorder(_ppf())
    text = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    fn = guided_velocity(model, text, patchify=True)  # the per-stage velocity of a PPF model
    shape = (2, 4, 2, 8, 8)
    run = [sample(fn, schedule, transform, shape, (2, 1, 2), torch.Generator().manual_seed(3), step_rule=rule,
                  transition=t) for t in (identity_transition, haar_jump)]
    assert run[0].shape == shape and torch.isfinite(run[0]).all()
    torch.testing.assert_close(run[0], run[1], rtol=0, atol=0)  # the jump with c = 1 is the identity
    calls = model.calls[:5]
    assert [c[:2] for c in calls] == [(shape, 0), (shape, 0), (shape, 1), (shape, 2), (shape, 2)]
    assert [round(c[2], 3) for c in calls] == [1000.0, 850.0, 700.0, 400.0, 200.0]


def test_an_identity_transition_needs_meeting_windows():
    schedule = PyramidSchedule(2, gain=2.0)  # the jump's windows: stage 1 starts above stage 0's end
    with pytest.raises(PyramidflowError, match="needs stage 0 to end where stage 1 starts") as err:
        sample(lambda x, s, i: torch.zeros_like(x), schedule, IdentityTransform(), (1, 4, 1, 4, 4), (1, 1),
               transition=identity_transition)
    assert len(str(err.value).splitlines()) == 1


def test_both_losses_run_each_stage_at_its_level_and_agree():
    schedule, transform = PyramidConfig(num_stages=3, patchify=True).build()
    model = _Recorder(_ppf())
    model.forward_packed = model.model.forward_packed
    x0 = torch.randn(4, 4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    text = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(5))
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(4)]  # noqa: E731
    a = pyramid_flow_loss(model, x0, text, schedule, transform, gens(), patchify=True)
    assert sorted(level for _, level, _ in model.calls) == sorted(set(a.stage.tolist()))
    b = packed_flow_loss(model, list(x0.split(1)), text, schedule, transform, gens(), TemporalConfig(),
                         patchify=True)
    assert torch.equal(a.stage, b.stage) and len(set(a.stage.tolist())) > 1
    torch.testing.assert_close(a.per_example, b.per_example, rtol=1e-4, atol=1e-6)
    plain = pyramid_flow_loss(model, x0, text, schedule, transform, gens())  # every stage at the finest
    assert not torch.allclose(plain.per_example, a.per_example)


def test_patchify_mismatches_are_one_line_errors(tmp_path):
    from pyramidflow.models.text_encoders import EmbeddedTextEncoder
    from pyramidflow.pipelines import PipelineConfig

    text = EmbeddedTextEncoder.from_captions(["a red circle"], dim=16, num_layers=1, num_heads=2,
                                             max_length=4)
    pixel = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3,
                 out_channels=3, text_dim=16, freq_dim=16, ffn_dim=16, num_layers=1)
    cases = [
        (lambda: PyramidConfig(patchify=True, temporal=True).build(), "pyramid.temporal and"),
        (lambda: PipelineConfig(pyramid=PyramidConfig(patchify=True),
                                temporal=TemporalConfig(mode="autoregressive")).check(),
         "temporal.mode: full"),
        (lambda: PyramidFlowPipeline(PyramidDiT(**pixel), text, None, PipelineConfig(
            pyramid=PyramidConfig(num_stages=2, patchify=True))), "needs a transformer with patch levels"),
        (lambda: PyramidFlowPipeline(PPFDiT(**pixel, ppf_patch_sizes=[[1, 4, 4], [1, 2, 2]]), text, None,
                                     PipelineConfig(pyramid=PyramidConfig(num_stages=3, patchify=True))),
         "the transformer has 2 levels [[1, 4, 4], [1, 2, 2]], the pyramid 3 stages"),
        (lambda: load_config(TrainConfig, None, ["model.ppf_patch_sizes=[[1,8,8],[1,4,4]]",
                                                 "pyramid.num_stages=2", "sampling.steps=[1,1]"]).check(),
         "it needs pyramid.patchify: true"),
        (lambda: load_config(TrainConfig, None, ["model.ppf_patch_sizes=[[1,8,8],[1,4,4]]",
                                                 "pyramid.patchify=true", "model.lora_rank=4",
                                                 "pyramid.num_stages=2", "sampling.steps=[1,1]"]).check(),
         "model.lora_rank"),
    ]
    for call, message in cases:
        with pytest.raises(PyramidflowError) as err:
            call()
        assert message in str(err.value) and len(str(err.value).splitlines()) == 1, str(err.value)


# ---------------------------------------------------------------------------------------------- CLI
PRESET = ROOT / "configs" / "shapes-tiny.yaml"
PIXEL = ["data.height=16", "data.width=16", "data.num_clips=32", "model.num_layers=1", "model.ffn_dim=32",
         "model.attention_head_dim=8", "model.num_attention_heads=2", "model.freq_dim=16",
         "text_encoder.dim=16", "text_encoder.num_layers=1", "text_encoder.vocab_captions=200",
         "loop.batch_size=4", "checkpoint_every=1", "validation_prompts=0", "optim.warmup_steps=1",
         "temporal.mode=full_sequence", "pyramid.num_stages=2", "pyramid.patchify=true",
         "pyramid.stage_ends=[0.6,0.0]", "sampling.steps=[2,2]", "model.patch_size=[1,4,4]",
         "model.ppf_patch_sizes=[[1,8,8],[1,4,4]]", "loop.keep_last=5"]


def _train(out, steps, *extra, resume=None):
    args = ["train", "--config", str(PRESET), "--out", str(out), "--max-steps", str(steps), "--quiet"]
    for item in PIXEL + list(extra):
        args += ["--set", item]
    assert main(args + (["--resume", resume] if resume else [])) == 0


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next((folder / "transformer").glob("*.safetensors")))


def test_train_resume_and_sample_a_ppf_model(tmp_path):
    _train(tmp_path / "a", 2)
    meta = json.loads((tmp_path / "a" / "checkpoint-2" / "meta.json").read_text())["extra"]["config"]
    assert meta["pyramid"]["patchify"] and meta["model"]["ppf_patch_sizes"] == [[1, 8, 8], [1, 4, 4]]
    assert json.loads((tmp_path / "a" / "checkpoint-2" / "transformer" / "config.json").read_text())[
        "_class_name"] == "PPFDiT"
    _train(tmp_path / "a", 3, resume="latest")
    _train(tmp_path / "b", 3)
    a, b = _weights(tmp_path / "a" / "checkpoint-3"), _weights(tmp_path / "b" / "checkpoint-3")
    assert a.keys() == b.keys() and "ppf_embeddings.0.weight" in a and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["ppf_embeddings.0.weight"], _weights(tmp_path / "a" / "checkpoint-1")[
        "ppf_embeddings.0.weight"])  # the coarse level is trained
    pipe = PyramidFlowPipeline.from_pretrained(tmp_path / "a" / "pipeline")
    assert isinstance(pipe.transformer, PPFDiT) and pipe.config.pyramid.patchify
    for rule in ("euler", "x0_renoise"):
        out = tmp_path / f"{rule}.mp4"
        assert main(["sample", "--checkpoint", str(tmp_path / "a" / "pipeline"), "--prompt",
                     "a red circle", "--frames", "2", "--steps", "1,2", "--step-rule", rule,
                     "--out", str(out), "--quiet"]) == 0
        assert out.stat().st_size > 0
    with pytest.raises(PyramidflowError, match="height 20 does not fit this model .* a multiple of 8"):
        pipe("a red circle", height=20, progress=False)


def test_train_converts_a_pretrained_one_patch_transformer(tmp_path):
    torch.manual_seed(0)
    base = PyramidDiT(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=8, in_channels=3,
                      out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1)
    base.save_pretrained(tmp_path / "base")
    _train(tmp_path / "run", 1, f"model.pretrained={tmp_path / 'base'}", "optim.lr=0")
    got = _weights(tmp_path / "run" / "checkpoint-1")
    ref = PPFDiT.from_transformer(base, [[1, 8, 8], [1, 4, 4]]).state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_ppf_shapes_preset_finetunes_a_wan_teacher_and_exports_a_pyramidal_wan_pipeline(tmp_path):
    from wan_folder import build_wan_pipeline

    wan = tmp_path / "wan"
    build_wan_pipeline(seed=5).save_pretrained(wan)
    toy = [f"wan={wan}", "data.num_clips=8", "text_encoder.max_length=32", "sampling.steps=[1,1,1]",
           "loop.batch_size=2", "loop.checkpoint_every=2", "optim.warmup_steps=1", "num_threads=1",
           "validation_prompts=0"]
    sets = [a for item in toy for a in ("--set", item)]
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "pyramidflow", "train", "--config",
                           str(ROOT / "configs" / "ppf-shapes.yaml"), "--quiet", *sets, "--max-steps", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "PyramidalWanPipeline"
    assert index["transformer"] == ["pyramidflow", "PPFDiT"]
    pipe = PyramidalWanPipeline.from_pretrained(out / "pipeline")
    assert isinstance(pipe.transformer, PPFDiT) and pipe.config.pyramid.patchify
    assert pipe.transformer.patch_sizes == ((1, 4, 4), (1, 2, 4), (1, 2, 2))
    clip = pipe("a red circle moving right", num_inference_steps=(1, 1, 1), seed=0, output_type="pt",
                progress=False).frames
    assert clip.shape == (1, 17, 3, 32, 32) and torch.isfinite(clip).all()  # 5x4x4 latents: 5, 10, 20 tokens
