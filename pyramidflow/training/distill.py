"""``pyramidflow distill``: a few-step student from a teacher pipeline (docs/distillation.md).

A :class:`DistillConfig` names the teacher (the real score, and the critic's or discriminator's
start) and the student's start (default the teacher), both pipeline folders, training checkpoints
or training output folders, in any layout ``pyramidflow sample`` reads. The pair is checked
(channels, patch size, text width, text encoder, space and VAE: a one-line error names the
mismatch), the method is built (:class:`DMDDistillation` or :class:`AdversarialDistillation`) and run
by the shared :class:`Trainer` (checkpoints, exact resume, non-finite stop, EMA of the student,
validation samples with evaluator scores). At the end the student's EMA weights are exported as a
pipeline to ``OUT/pipeline`` whose saved sampling defaults are the few-step schedule: the student's
steps per stage, the x0 re-noising rule (docs/maths.md (9.1)) and no guidance.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from pyramidflow.config import check_seed, from_dict, to_dict
from pyramidflow.data.sources import clip_dataset
from pyramidflow.errors import PyramidflowError
from pyramidflow.io.run_dir import claim_run_dir
from pyramidflow.models.lora import stage_adapters
from pyramidflow.models.ppf import patch_sizes_of
from pyramidflow.pipelines import PyramidalWanPipeline, PyramidFlowPipeline
from pyramidflow.pipelines.loading import load_pipeline_parts
from pyramidflow.training.config import DataConfig, LoopConfig, OptimConfig
from pyramidflow.training.methods.adversarial import AdversarialConfig, AdversarialDistillation
from pyramidflow.training.methods.dmd import DMDConfig, DMDDistillation, Student
from pyramidflow.training.run import SampleScorer, has_wan_parts
from pyramidflow.training.trainer import Trainer

METHODS = ("dmd", "adversarial")
_PROBE = ["a red circle moving left"]  # any prompt: two encoders that agree on it are taken as one


@dataclass
class DistillConfig:
    output_dir: str = "outputs/distill"
    method: str = "dmd"  # dmd | adversarial
    teacher: str | None = None  # the real score (frozen); the critic / discriminator starts from it
    student: str | None = None  # where the student starts (default: the teacher)
    steps: tuple[int, ...] = (2, 2, 1)  # the student's steps per stage
    num_threads: int = 0
    gradient_checkpointing: bool = False  # student and critic recompute block activations (large models)
    validation_prompts: int = 16
    data: DataConfig = field(default_factory=DataConfig)  # prompts (and, adversarial, real clips)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    student_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, betas=(0.0, 0.999),
                                                                            warmup_steps=0))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, betas=(0.0, 0.999),
                                                                           warmup_steps=0))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(text_dropout=0.0))

    def check(self) -> None:
        if self.method not in METHODS:
            raise PyramidflowError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if not self.teacher:
            raise PyramidflowError("teacher: a pipeline folder or training run is needed (the real score)")
        check_seed(self.loop.seed, "loop.seed")

    @classmethod
    def from_dict(cls, data: dict) -> DistillConfig:
        return from_dict(cls, data)


@dataclass
class Pair:
    """The loaded student start and teacher: (transformer, text_encoder, vae, PipelineConfig) each."""

    student: tuple
    teacher: tuple


def check_pair(student: tuple, teacher: tuple) -> None:
    """One-line error naming the first thing the student and the teacher disagree on."""
    (s_model, s_text, s_vae, s_cfg), (t_model, t_text, t_vae, t_cfg) = student, teacher
    for key in ("in_channels", "out_channels", "patch_size", "text_dim"):
        a, b = _plain(s_model.config[key]), _plain(t_model.config[key])
        if a != b:
            raise PyramidflowError(f"the student's transformer has {key} {a}, the teacher's {b}: distil "
                                   "between models of one latent space and one text encoder")
    if s_cfg.space != t_cfg.space:
        raise PyramidflowError(f"the student works in {s_cfg.space} space, the teacher in {t_cfg.space}")
    if s_cfg.temporal.autoregressive or t_cfg.temporal.autoregressive:
        raise PyramidflowError("distillation supports full-sequence models; this pair has an autoregressive "
                               "one (temporal.mode: autoregressive)")
    if s_cfg.space == "latent":
        same = (type(s_vae) is type(t_vae) and s_vae.latent_channels == t_vae.latent_channels
                and all(torch.equal(a, b)
                        for a, b in zip(s_vae.latent_stats(), t_vae.latent_stats(), strict=True)))
        if not same:
            raise PyramidflowError(f"the student's VAE ({type(s_vae).__name__}, {s_vae.latent_channels} "
                                   "channels) "
                                   f"differs from the teacher's ({type(t_vae).__name__}, "
                                   f"{t_vae.latent_channels} channels) or has other latent statistics")
    check_stage_routing(t_model, s_cfg.pyramid, "teacher")
    with torch.no_grad():
        a, b = s_text.encode(_PROBE)[0], t_text.encode(_PROBE)[0]
    if a.shape != b.shape or not torch.allclose(a.float(), b.float(), atol=1e-5):
        raise PyramidflowError(f"the student's text encoder ({type(s_text).__name__}, {tuple(a.shape)}) "
                               f"encodes prompts differently from the teacher's ({type(t_text).__name__}, "
                               f"{tuple(b.shape)}): distil with the teacher's text encoder")


def check_stage_routing(model, pyramid, role: str) -> None:
    """A teacher with per-stage adapters or patch levels is called with the *student's* stage index:
    its stages must be the student's (same count, patchification or not)."""
    adapters, levels = stage_adapters(model), patch_sizes_of(model)
    if adapters and adapters != pyramid.num_stages:
        raise PyramidflowError(f"the {role} has {adapters} per-stage LoRA adapters, the student's pyramid "
                               f"{pyramid.num_stages} stages: they must match")
    if levels is not None and (not pyramid.patchify or len(levels) != pyramid.num_stages):
        raise PyramidflowError(f"the {role} is a patchification model with {len(levels)} patch levels; the "
                               f"student's pyramid must patchify with as many stages (it has "
                               f"{pyramid.num_stages}, patchify {pyramid.patchify})")


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def load_pair(cfg: DistillConfig) -> Pair:
    teacher = load_pipeline_parts(Path(cfg.teacher))
    student = load_pipeline_parts(Path(cfg.student)) if cfg.student else copy.deepcopy(teacher)
    check_pair(student, teacher)
    return Pair(student, teacher)


def student_config(cfg: DistillConfig, base):
    """The student pipeline's config: the start's, with the few-step sampling defaults."""
    sampling = replace(base.sampling, steps=tuple(cfg.steps), first_steps=None, guidance=1.0,
                       video_guidance=None, step_rule="x0_renoise")
    return replace(base, sampling=sampling)


def student_pipeline(model, parts: tuple, config) -> PyramidFlowPipeline:
    _, text, vae, _ = parts
    kind = PyramidalWanPipeline if has_wan_parts(vae, text) else PyramidFlowPipeline
    return kind(model, text, vae if config.space == "latent" else None, config)


def prompt_dataset(cfg: DistillConfig):
    d = cfg.data
    extra = ({"bounce": d.bounce, "travel_frames": d.travel_frames} if d.source == "shapes"
             else {"stride": d.stride})
    return clip_dataset(d.source, d.path, frames=d.frames, length=d.num_clips, height=d.height, width=d.width,
                        seed=d.seed, fps=d.fps, **extra)


def build_method(cfg: DistillConfig, pair: Pair, validator=None, finisher=None):
    s_model, s_text, s_vae, s_cfg = pair.student
    config = student_config(cfg, s_cfg)
    schedule, transform = config.pyramid.build()
    schedule.check_steps(cfg.steps)
    probe = student_pipeline(s_model, pair.student, config)
    shape = probe.model_shape(1, cfg.data.frames, cfg.data.height, cfg.data.width)[1:]
    spec = Student(schedule, transform, tuple(cfg.steps), tuple(shape), config.pyramid.transition())
    common = dict(student_optim=cfg.student_optim, validator=validator, finisher=finisher,
                  extra={"config": to_dict(cfg)})
    teacher = pair.teacher[0].float()
    if cfg.method == "dmd":
        method = DMDDistillation(s_model.float(), teacher, s_text, spec, cfg.dmd,
                                 critic_optim=cfg.critic_optim, **common)
    else:
        method = _adversarial(cfg, pair, s_model, teacher, s_text, spec, common)
    if cfg.gradient_checkpointing:
        for role in method.modules().values():
            if hasattr(role, "enable_gradient_checkpointing"):
                role.enable_gradient_checkpointing()
    return method


def _adversarial(cfg, pair, s_model, teacher, s_text, spec, common):
    s_vae, s_cfg = pair.student[2], pair.student[3]
    return AdversarialDistillation(s_model.float(), teacher, s_text, spec, cfg.adversarial,
                                   autoencoder=s_vae if s_cfg.space == "latent" else None,
                                   encoded=cfg.data.source == "latents",
                                   disc_optim=cfg.critic_optim, **common)


def distill_from_config(cfg: DistillConfig, resume: str | None = None, validate: bool = True,
                        overwrite: bool = False, accelerator=None) -> dict:
    """Build, distil (resuming if asked), validate and export ``OUT/pipeline``; returns last stats."""
    cfg.check()
    claim_run_dir(cfg.output_dir, resume, overwrite)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    pair = load_pair(cfg)
    config = student_config(cfg, pair.student[3])
    scorer = (SampleScorer(cfg.data, cfg.validation_prompts, cfg.output_dir, cfg.loop.seed, pair.student[2])
              if validate and cfg.validation_prompts > 0 else None)

    def validator(trainer, step, modules):
        return scorer(student_pipeline(modules["student"], pair.student, config), trainer, step)

    def export(trainer) -> dict:
        with trainer.sampling_modules(gather=False) as modules:
            student_pipeline(modules["student"], pair.student, config).save_pretrained(
                Path(cfg.output_dir) / "pipeline")
        return {}

    torch.manual_seed(cfg.loop.seed)
    method = build_method(cfg, pair, validator if scorer is not None else None, export)
    trainer = Trainer(method, prompt_dataset(cfg), cfg.loop, cfg.output_dir, accelerator=accelerator)
    if trainer.accelerator.is_main_process:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    stats = trainer.train(resume=resume)
    stats["step"] = trainer.step
    return stats
