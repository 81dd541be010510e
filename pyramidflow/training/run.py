"""A whole training run: components, periodic validation samples with scores, the exported pipeline.

Validation (every ``loop.validate_every`` steps and at the end) samples ``validation_prompts``
captions of held-out clips with the EMA weights, writes ``OUT/samples/step-NNNNNNN/`` (one mp4 and
prompt per clip, ``sheet.png``, ``metrics.json``) and returns the scores, which the trainer logs
(``val/...`` in ``OUT/metrics.jsonl`` and TensorBoard): evaluator accuracies (shapes prompts) and the
descriptor Fréchet distance to the held-out clips. At the end the EMA weights are exported as a
pipeline to ``OUT/pipeline``: this project's layout, a ``PyramidalWanPipeline`` folder for runs on
Wan parts, and a genuine diffusers ``WanPipeline`` folder for one-stage runs on Wan parts (a toy
teacher).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyramidflow.config import to_dict
from pyramidflow.data.sources import clip_dataset
from pyramidflow.eval import score_clips
from pyramidflow.io import write_clips
from pyramidflow.io.run_dir import claim_run_dir
from pyramidflow.models import PretrainedTextEncoder
from pyramidflow.models.lora import fused_copy, has_lora, save_lora, stage_adapters
from pyramidflow.models.vae import model_to_frames
from pyramidflow.models.vae.wan import WanVAE
from pyramidflow.pipelines import PipelineConfig, PyramidalWanPipeline, PyramidFlowPipeline
from pyramidflow.training.build import Components, build_components, make_trainer
from pyramidflow.training.config import DataConfig, TrainConfig


def held_out(d: DataConfig, count: int, vae=None) -> tuple[list[str], list[torch.Tensor]]:
    """Prompts and clips (T, 3, H, W) in [0, 1] to validate with: the shapes validation split, or
    the first clips of a real dataset (a latent cache's clips decoded by ``vae``)."""
    if d.source == "shapes":
        ds = clip_dataset("shapes", frames=d.frames, height=d.height, width=d.width, seed=d.seed,
                          length=max(count, 2), split="val", fps=d.fps, bounce=d.bounce,
                          travel_frames=d.travel_frames)
    else:
        ds = clip_dataset(d.source, d.path, frames=d.frames, height=d.height, width=d.width, fps=d.fps)
    items = [ds[i] for i in range(min(count, len(ds)))]
    clips = [it["video"] for it in items]
    if d.source == "latents":
        clips = [_decode(vae, z) for z in clips]
    return [it["text"] for it in items], clips


@torch.no_grad()
def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """(C, T, h, w) normalised latents -> (T, 3, H, W) in [0, 1]."""
    return model_to_frames(vae.decode(latents[None].to(next(vae.parameters()).device, vae.dtype)))[0].cpu()


def pipeline_of(modules: dict, cfg: TrainConfig, parts: Components) -> PyramidFlowPipeline:
    """A pipeline over the given training modules (``Trainer.sampling_modules``: EMA weights)."""
    text = modules.get("text_encoder", parts.text_encoder)
    vae = parts.autoencoder if cfg.space == "latent" else None
    config = PipelineConfig.from_train_dict(to_dict(cfg))
    kind = PyramidalWanPipeline if is_wan_run(cfg, parts) else PyramidFlowPipeline  # Wan's layout
    return kind(modules["transformer"], text, vae, config)


def is_wan_run(cfg: TrainConfig, parts: Components) -> bool:
    """A run from a Wan folder, or one whose parts are Wan's (an AutoencoderKLWan and a frozen
    transformers encoder, e.g. a toy teacher): its pipeline is saved in Wan's layout."""
    return bool(cfg.wan) or has_wan_parts(parts.autoencoder, parts.text_encoder)


def has_wan_parts(autoencoder, text_encoder) -> bool:
    """An AutoencoderKLWan and a frozen transformers text encoder: a model saved in Wan's layout."""
    return isinstance(autoencoder, WanVAE) and isinstance(text_encoder, PretrainedTextEncoder)


class SampleScorer:
    """Samples held-out prompts with a pipeline, writes ``OUT/samples/step-NNNNNNN/`` and returns the
    evaluator's scores (module docstring); shared by training and distillation runs."""

    def __init__(self, data: DataConfig, count: int, out_dir: str | Path, seed: int, vae=None) -> None:
        self.data, self.out_dir, self.seed = data, Path(out_dir), seed
        self.prompts, self.reference = held_out(data, count, vae)

    def __call__(self, pipe, trainer, step: int) -> dict:
        video = pipe(self.prompts, seed=self.seed, output_type="pt", progress=False).frames.cpu()
        folder = self.out_dir / "samples" / f"step-{step:07d}"
        write_clips(folder, video, self.prompts, self.data.fps)
        travel = self.data.travel_frames if self.data.source == "shapes" else None
        scores = score_clips(list(video), self.prompts, self.reference, travel_frames=travel)
        flat = {k: v for k, v in scores["accuracy"].items() if isinstance(v, float)}
        flat["train_seconds"] = round(trainer.train_seconds, 2)
        if scores["frechet"] is not None:
            flat["frechet"] = scores["frechet"]
        (folder / "metrics.json").write_text(json.dumps({"step": step, **flat}, indent=1))
        return flat


class Validator:
    """The trainer's ``validate(trainer, step)`` hook (module docstring)."""

    def __init__(self, cfg: TrainConfig, parts: Components) -> None:
        self.cfg, self.parts = cfg, parts
        self.scorer = SampleScorer(cfg.data, cfg.validation_prompts, cfg.output_dir, cfg.loop.seed,
                                   parts.autoencoder)

    def __call__(self, trainer, step: int, modules: dict) -> dict:
        return self.scorer(pipeline_of(modules, self.cfg, self.parts), trainer, step)


def train_from_config(cfg: TrainConfig, resume: str | None = None, validate: bool = True,
                      accelerator=None, overwrite: bool = False) -> dict:
    """Build, train (resuming if asked), validate, and export ``OUT/pipeline``; returns last stats.

    A new run into a folder holding another run's checkpoints is refused unless ``overwrite``
    (:func:`pyramidflow.io.run_dir.claim_run_dir`)."""
    claim_run_dir(cfg.output_dir, resume, overwrite)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    parts = build_components(cfg)
    hook = Validator(cfg, parts) if validate and cfg.validation_prompts > 0 else None

    def export(trainer) -> dict:  # the EMA weights as a pipeline (main process)
        out = Path(cfg.output_dir) / "pipeline"
        with trainer.sampling_modules(gather=False) as modules:  # as of the final checkpoint
            adapted = modules["transformer"]
            if has_lora(adapted) and not stage_adapters(adapted):  # merged weights + lora/ the adapter
                save_lora(adapted, out / "lora")  # first: the pipeline's checksums cover it
                modules = {**modules, "transformer": fused_copy(adapted)}
            pipe = pipeline_of(modules, cfg, parts)
            if isinstance(pipe, PyramidalWanPipeline) and cfg.pyramid.num_stages == 1:
                pipe.export_wan_pipeline(out)  # a one-stage Wan model: a genuine WanPipeline folder
            else:
                pipe.save_pretrained(out)
        return {}

    trainer = make_trainer(cfg, parts, hook, export, accelerator)
    stats = trainer.train(resume=resume)
    stats["step"] = trainer.step
    return stats
