"""``pyramidflow distill``: DMD and adversarial distillation train, resume exactly, export a few-step
pipeline, stop on non-finite losses, and refuse mismatched pairs (docs/maths.md section 9)."""

import pytest
import torch

from pyramidflow.cli import main
from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PyramidDiT
from pyramidflow.pipelines import PyramidFlowPipeline
from pyramidflow.training.distill import DistillConfig, build_method, distill_from_config, load_pair
from pyramidflow.training.trainer import TrainingDiverged

SHIPPED = "checkpoints/shapes-tiny"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The shipped model as a full-sequence pyramidal teacher (4 frames, 32x32 pixels)."""
    pipe = PyramidFlowPipeline.from_pretrained(SHIPPED)
    pipe.config.temporal.mode = "full_sequence"
    path = tmp_path_factory.mktemp("teacher") / "pipe"
    pipe.save_pretrained(path)
    return path


def config(teacher, out, method="dmd", steps=3, **extra) -> DistillConfig:
    cfg = DistillConfig.from_dict({
        "output_dir": str(out), "method": method, "teacher": str(teacher), "steps": [1, 1, 1],
        "validation_prompts": 0,
        "data": {"source": "shapes", "frames": 4, "height": 32, "width": 32, "num_clips": 64},
        "dmd": {"ratio": 2, "w_dmd": [0.5, 1.0, 1.0]},
        "loop": {"batch_size": 2, "max_steps": steps, "checkpoint_every": 1, "keep_last": 5, "ema_decay": 0.9,
                 "progress": False, "log_every": 1},
        **extra,
    })
    return cfg


def latest_checkpoint(out):
    return max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def _weights(folder):
    return PyramidDiT.from_pretrained(folder).state_dict()


@pytest.mark.parametrize("method", ["dmd", "adversarial"])
def test_distillation_resumes_exactly_and_exports_a_few_step_pipeline(teacher, tmp_path, method):
    distill_from_config(config(teacher, tmp_path / "full", method))
    distill_from_config(config(teacher, tmp_path / "half", method, steps=2))
    distill_from_config(config(teacher, tmp_path / "half", method), resume="latest")
    a = latest_checkpoint(tmp_path / "full")
    b = latest_checkpoint(tmp_path / "half")
    for role in ("student", "ema_student"):
        for (name, p), q in zip(_weights(a / role).items(), _weights(b / role).values(), strict=True):
            assert torch.equal(p, q), (role, name)
    start = PyramidFlowPipeline.from_pretrained(teacher).transformer.state_dict()
    moved = _weights(a / "student")
    assert any(not torch.equal(start[k], moved[k]) for k in start)  # the student did learn
    pipe = PyramidFlowPipeline.from_pretrained(tmp_path / "full" / "pipeline")
    s = pipe.config.sampling
    assert (s.steps, s.step_rule, s.guidance) == ((1, 1, 1), "x0_renoise", 1.0)
    out = pipe("a green square moving up on a white background", seed=0, output_type="pt", progress=False)
    assert out.frames.shape == (1, 4, 3, 32, 32) and torch.isfinite(out.frames).all()


def test_dmd_updates_the_student_every_ratio_steps_and_never_the_teacher(teacher, tmp_path):
    cfg = config(teacher, tmp_path / "run")
    cfg.gradient_checkpointing = True  # what a large model needs; the loss is unchanged
    method = build_method(cfg, load_pair(cfg))
    assert method.student.gradient_checkpointing and method.critic.gradient_checkpointing
    assert method.phases(0) == ["critic", "student"] and method.phases(1) == ["critic"]
    assert "teacher" in method.frozen_modules() and set(method.modules()) == {"student", "critic"}
    assert not any(p.requires_grad for p in method.teacher.parameters())
    start = {k: v.clone() for k, v in method.critic.state_dict().items()}  # the critic starts as the teacher
    assert all(torch.equal(start[k], v) for k, v in method.teacher.state_dict().items())
    from pyramidflow.training.distill import prompt_dataset
    from pyramidflow.training.trainer import Trainer

    trainer = Trainer(method, prompt_dataset(cfg), cfg.loop, cfg.output_dir)
    stats = trainer.train_step()  # step 0: both phases
    assert "loss_student" in stats and "loss_dmd" in stats
    stats = trainer.train_step()  # step 1: the critic only
    assert "loss_student" not in stats and "loss_critic" in stats
    assert all(torch.equal(start[k], v) for k, v in method.teacher.state_dict().items())
    assert any(not torch.equal(start[k], v) for k, v in method.critic.state_dict().items())


def test_a_nonfinite_teacher_stops_the_run_cleanly(teacher, tmp_path):
    cfg = config(teacher, tmp_path / "nan")
    pair = load_pair(cfg)
    with torch.no_grad():
        next(pair.teacher[0].parameters()).fill_(float("nan"))
    method = build_method(cfg, pair)
    from pyramidflow.training.distill import prompt_dataset
    from pyramidflow.training.trainer import Trainer

    trainer = Trainer(method, prompt_dataset(cfg), cfg.loop, cfg.output_dir)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        trainer.train()


def test_mismatched_pairs_are_one_line(teacher, tmp_path):
    pipe = PyramidFlowPipeline.from_pretrained(teacher)
    other = PyramidDiT(**{**pipe.transformer.config, "patch_size": (1, 2, 2)})
    PyramidFlowPipeline(other, pipe.text_encoder, None, pipe.config).save_pretrained(tmp_path / "patch")
    with pytest.raises(PyramidflowError, match=r"patch_size \(1, 2, 2\), the teacher's \(1, 4, 4\)"):
        load_pair(config(teacher, tmp_path / "x", student=str(tmp_path / "patch")))
    with torch.no_grad():
        for p in pipe.text_encoder.parameters():
            p.add_(0.1)
    pipe.save_pretrained(tmp_path / "text")
    with pytest.raises(PyramidflowError, match="text encoder .* encodes prompts differently"):
        load_pair(config(teacher, tmp_path / "y", student=str(tmp_path / "text")))
    with pytest.raises(PyramidflowError, match="unknown method 'gan'; valid: dmd, adversarial"):
        distill_from_config(config(teacher, tmp_path / "z", method="gan"))


def test_the_command_runs_a_preset(teacher, tmp_path, capsys):
    code = main(["distill", "--config", "configs/distill-dmd-pt.yaml", "--out", str(tmp_path / "cli"),
                 "--max-steps", "1", "--quiet", "--set", f"teacher={teacher}",
                 "--set", "validation_prompts=2",
                 "--set", "steps=[1,1,1]", "--set", "data.frames=4", "--set", "data.height=32",
                 "--set", "data.width=32", "--set", "data.travel_frames=null", "--set", "loop.batch_size=1"])
    assert code == 0 and "done:" in capsys.readouterr().out
    assert (tmp_path / "cli" / "pipeline" / "model_index.json").is_file()
    import json  # validation: the student's few-step samples judged by the evaluator

    metrics = json.loads((tmp_path / "cli" / "samples" / "step-0000001" / "metrics.json").read_text())
    assert 0.0 <= metrics["color"] <= 1.0 and "frechet" in metrics


def test_a_patchification_student_distils_through_identity_transitions(teacher, tmp_path):
    # Few-step PPF by DMD: the student runs stage i at patch level i on the full-resolution latent.
    from dataclasses import replace

    from pyramidflow.models.ppf import PPFDiT
    from pyramidflow.pyramid.config import PyramidConfig

    pipe = PyramidFlowPipeline.from_pretrained(teacher)
    ppf = PPFDiT.from_transformer(pipe.transformer, [(1, 8, 8), (1, 4, 4)])
    config = replace(pipe.config, pyramid=PyramidConfig(num_stages=2, patchify=True))
    config.sampling = replace(config.sampling, steps=(4, 4))
    PyramidFlowPipeline(ppf, pipe.text_encoder, None, config).save_pretrained(tmp_path / "ppf")
    cfg = DistillConfig.from_dict({
        "output_dir": str(tmp_path / "run"), "teacher": str(teacher), "student": str(tmp_path / "ppf"),
        "steps": [1, 1], "validation_prompts": 0,
        "data": {"source": "shapes", "frames": 4, "height": 32, "width": 32, "num_clips": 16},
        "dmd": {"ratio": 1},
        "loop": {"batch_size": 2, "max_steps": 2, "checkpoint_every": 2, "progress": False}})
    method = build_method(cfg, load_pair(cfg))
    assert method.spec.transition.__name__ == "identity_transition"
    distill_from_config(cfg)
    out = PyramidFlowPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert isinstance(out.transformer, PPFDiT) and out.config.pyramid.patchify
    assert out.config.sampling.steps == (1, 1) and out.config.sampling.step_rule == "x0_renoise"
    frames = out("a red circle moving left", seed=1, output_type="pt", progress=False).frames
    assert frames.shape == (1, 4, 3, 32, 32) and torch.isfinite(frames).all()


def test_a_single_stage_wan_teacher_distils_into_a_few_step_wan_pipeline(tmp_path):
    # The paper's 0-0-4 row at toy size: a genuine diffusers WanPipeline folder as teacher and
    # student start; the student is exported in the pyramidal Wan layout with its few-step defaults.
    import json

    from wan_folder import save_wan_pipeline

    from pyramidflow.pipelines import PyramidalWanPipeline

    wan = save_wan_pipeline(tmp_path / "wan", seed=3)
    (wan / "generation.json").write_text(json.dumps({"height": 32, "width": 32, "num_frames": 9,
                                                     "num_inference_steps": 4, "guidance_scale": 3.0}))
    cfg = DistillConfig.from_dict({
        "output_dir": str(tmp_path / "run"), "teacher": str(wan), "steps": [2], "validation_prompts": 0,
        "data": {"source": "shapes", "frames": 9, "height": 32, "width": 32, "num_clips": 8},
        "dmd": {"ratio": 1, "real_guidance": 3.0, "renoise": "full"},
        "loop": {"batch_size": 1, "max_steps": 2, "checkpoint_every": 2, "progress": False}})
    stats = distill_from_config(cfg)
    assert "loss_dmd" in stats and "loss_regression" in stats
    index = json.loads((tmp_path / "run" / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "PyramidalWanPipeline"
    pipe = PyramidalWanPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    s = pipe.config.sampling
    assert (pipe.config.pyramid.num_stages, s.steps, s.guidance, s.step_rule) == (1, (2,), 1.0, "x0_renoise")
    frames = pipe("a red circle moving right", seed=0, output_type="pt", progress=False).frames
    assert frames.shape == (1, 9, 3, 32, 32) and torch.isfinite(frames).all()


def test_a_teacher_whose_stages_are_not_the_students_is_refused(teacher, tmp_path):
    from pyramidflow.models.lora import add_lora
    from pyramidflow.models.ppf import PPFDiT
    from pyramidflow.pyramid.config import PyramidConfig
    from pyramidflow.training.distill import check_stage_routing

    pipe = PyramidFlowPipeline.from_pretrained(teacher)
    ppf = PPFDiT.from_transformer(pipe.transformer, [(1, 8, 8), (1, 4, 4)])
    with pytest.raises(PyramidflowError, match="patchification model with 2 patch levels"):
        check_stage_routing(ppf, PyramidConfig(num_stages=3), "teacher")
    check_stage_routing(ppf, PyramidConfig(num_stages=2, patchify=True), "teacher")
    adapted = add_lora(pipe.transformer, 2, stages=2)
    with pytest.raises(PyramidflowError, match="2 per-stage LoRA adapters, the student's pyramid 3 stages"):
        check_stage_routing(adapted, PyramidConfig(num_stages=3), "teacher")


def test_an_original_teacher_judges_coarse_stages_at_full_resolution(teacher, tmp_path):
    # evaluate_at: full lifts stage k's x0 by nearest upsampling (the gradient flows through it)
    # and draws levels in the stage's global window.
    cfg = config(teacher, tmp_path / "ot", steps=2)
    cfg.dmd.evaluate_at = "full"
    method = build_method(cfg, load_pair(cfg))
    sched = method.spec.schedule
    x0 = torch.randn(1, 3, 4, 8, 8, requires_grad=True)  # stage 0 of a 32x32 pixel clip
    judged, at, window = method._judged(x0, 0)
    assert judged.shape == (1, 3, 4, 32, 32) and at == 2
    assert window == pytest.approx((1.0, sched.to_global(sched.windows[0][1], 0)))
    judged.sum().backward()
    torch.testing.assert_close(x0.grad, torch.full_like(x0, 16.0))  # each coarse entry feeds 4x4
    stats = distill_from_config(cfg)
    assert all(v == v for v in stats.values() if isinstance(v, float))  # finite, no NaN
    bad = config(teacher, tmp_path / "bad")
    bad.dmd.evaluate_at = "global"
    with pytest.raises(PyramidflowError, match="unknown dmd.evaluate_at 'global'; valid: stage, full"):
        build_method(bad, load_pair(bad))


@pytest.mark.parametrize("levels", ["stage", "clean"])
def test_the_discriminator_sees_renoised_or_clean_signals(teacher, tmp_path, monkeypatch, levels):
    from pyramidflow.training.methods import adversarial

    seen = []
    original = adversarial.TeacherFeatures.__call__

    def record(self, x, sigma, text, stage):
        seen.append(sigma.clone())
        return original(self, x, sigma, text, stage)

    monkeypatch.setattr(adversarial.TeacherFeatures, "__call__", record)
    distill_from_config(config(teacher, tmp_path / levels, "adversarial", steps=2,
                               adversarial={"levels": levels}))
    levels_seen = torch.cat(seen)
    assert len(seen) >= 4  # real and fake, per phase and step
    if levels == "clean":
        assert torch.equal(levels_seen, torch.zeros_like(levels_seen))
    else:
        assert (levels_seen > 0).all()


def test_an_unknown_discriminator_level_is_a_one_line_error(teacher, tmp_path):
    with pytest.raises(PyramidflowError, match="adversarial.levels must be one of stage, clean"):
        distill_from_config(config(teacher, tmp_path / "x", "adversarial", adversarial={"levels": "low"}))
