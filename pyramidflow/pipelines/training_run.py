"""A whole training run: components, periodic validation samples with scores, the exported pipeline.

Validation (every ``loop.validate_every`` steps and at the end) samples ``validation_prompts``
captions of held-out clips with the EMA weights, writes ``OUT/samples/step-NNNNNNN/`` (one mp4 and
prompt per clip, ``sheet.png``, ``metrics.json``), appends the scores to ``OUT/metrics.jsonl`` and
logs them to TensorBoard: evaluator accuracies (shapes prompts) and the descriptor Fréchet distance
to the held-out clips. At the end the EMA weights are exported as a pipeline to ``OUT/pipeline``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyramidflow.data.sources import clip_dataset
from pyramidflow.eval import score_clips
from pyramidflow.io import contact_sheet, write_video
from pyramidflow.pipelines.pyramid_flow import PipelineConfig, PyramidFlowPipeline
from pyramidflow.training.experiment import Components, TrainConfig, build_components, make_trainer


def held_out(cfg: TrainConfig, count: int, vae=None) -> tuple[list[str], list[torch.Tensor]]:
    """Prompts and clips (T, 3, H, W) in [0, 1] to validate with: the shapes validation split, or
    the first clips of a real dataset (a latent cache's clips decoded by ``vae``)."""
    d = cfg.data
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
    video = vae.decode(latents[None].to(next(vae.parameters()).device, vae.dtype))[0]
    return video.float().clamp(-1, 1).add(1).div(2).permute(1, 0, 2, 3).cpu()


def write_clips(folder: Path, videos, prompts: list[str], fps: float, names: list[str] | None = None,
                sheet: Path | None = None) -> None:
    """``NAME.mp4`` + ``NAME.txt`` per clip (T, 3, H, W) in [0, 1] (names default to ``NN``), and a
    contact sheet of them all (default ``folder/sheet.png``); ``pyramidflow eval`` reads the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:02d}" for i in range(len(prompts))]
    for name, video, prompt in zip(names, videos, prompts, strict=True):
        write_video(folder / f"{name}.mp4", video, fps=fps)
        (folder / f"{name}.txt").write_text(prompt + "\n")
    contact_sheet(list(videos), prompts, sheet or folder / "sheet.png")


def pipeline_of(trainer, cfg: TrainConfig, parts: Components) -> PyramidFlowPipeline:
    """A pipeline over the trainer's EMA weights (or the live ones without EMA)."""
    modules = trainer.sampling_modules()
    text = modules["text_encoder"] if parts.trainable_text else parts.text_encoder
    return PyramidFlowPipeline(modules["transformer"], text, parts.vae, PipelineConfig.from_train(cfg))


class Validator:
    """The trainer's ``validate(trainer, step)`` hook (module docstring)."""

    def __init__(self, cfg: TrainConfig, parts: Components) -> None:
        self.cfg, self.parts = cfg, parts
        self.prompts, self.reference = held_out(cfg, cfg.validation_prompts, parts.vae)

    def __call__(self, trainer, step: int) -> dict:
        pipe = pipeline_of(trainer, self.cfg, self.parts)
        video = pipe(self.prompts, seed=self.cfg.loop.seed, output_type="pt", progress=False).frames.cpu()
        out = Path(self.cfg.output_dir)
        folder = out / "samples" / f"step-{step:07d}"
        write_clips(folder, video, self.prompts, self.cfg.data.fps)
        travel = self.cfg.data.travel_frames if self.cfg.data.source == "shapes" else None
        scores = score_clips(list(video), self.prompts, self.reference, travel_frames=travel)
        flat = {k: v for k, v in scores["accuracy"].items() if isinstance(v, float)}
        flat["train_seconds"] = round(trainer.train_seconds, 2)
        if scores["frechet"] is not None:
            flat["frechet"] = scores["frechet"]
        (folder / "metrics.json").write_text(json.dumps({"step": step, **flat}, indent=1))
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, **flat}) + "\n")
        return flat


def train_from_config(cfg: TrainConfig, resume: str | None = None, validate: bool = True,
                      accelerator=None) -> dict:
    """Build, train (resuming if asked), validate, and export ``OUT/pipeline``; returns last stats."""
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    parts = build_components(cfg)
    hook = Validator(cfg, parts) if validate and cfg.validation_prompts > 0 else None
    trainer = make_trainer(cfg, parts, hook, accelerator)
    stats = trainer.train(resume=resume)
    if trainer.accelerator.is_main_process:
        pipeline_of(trainer, cfg, parts).save_pretrained(Path(cfg.output_dir) / "pipeline")
    stats["step"] = trainer.step
    return stats
