"""One table for several models on the same prompts and the same judge: teachers, pyramidal
conversions, few-step students (docs/wan.md, docs/distillation.md).

Each ``--variant`` is ``label=NAME,path=DIR[,steps=20-20-10][,guidance=5][,rule=euler|x0_renoise]
[,runner=ours|diffusers]``: a pipeline folder (any layout ``pyramidflow sample`` reads) sampled with
this project's pipeline, or, with ``runner=diffusers``, a genuine diffusers ``WanPipeline`` folder
sampled by diffusers itself (its own scheduler; ``steps`` is one number). Unset values take the
model's saved defaults (``generation.json`` for a WanPipeline folder).

Prompts: the demo's (``--demo N``) plus ``--heldout N`` captions of the shapes validation split, one
clip each, seeds 0, 1, 2, ... (``--skip-heldout N`` starts at the N-th caption and seed N: prompts
that took no part in choosing a model). The reference clips of the Fréchet distance are real
validation clips of the same size and motion scale. Per variant the table gives network evaluations, transformer
TFLOPs per clip (docs/maths.md section 15), CPU seconds per clip (sampling and decoding, batch 1,
this process's threads), the evaluator's accuracies and the Fréchet distance.

    python bench/bench_variants.py --variant label=teacher,path=T,runner=diffusers,steps=50 \\
        --variant label=pyramidal,path=P,steps=20-20-10 --demo 16 --heldout 32 --out outputs/variants

Writes ``OUT/LABEL/`` (clips, sheet, metrics.json) and ``OUT/table.json``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.demo import demo_prompts
from pyramidflow.eval import score_clips
from pyramidflow.flops import TransformerSpec, schedule_flops
from pyramidflow.io import write_clips
from pyramidflow.pipelines import PyramidFlowPipeline

KEYS = ("color", "shape", "direction", "speed", "background", "intact", "all")


@dataclass
class Variant:
    label: str
    path: Path
    steps: tuple[int, ...] | None = None
    guidance: float | None = None
    rule: str | None = None
    runner: str = "ours"


def parse_variant(text: str) -> Variant:
    fields = dict(item.split("=", 1) for item in text.split(",") if item)
    unknown = set(fields) - {"label", "path", "steps", "guidance", "rule", "runner"}
    if unknown or "label" not in fields or "path" not in fields:
        raise SystemExit(f"--variant {text!r}: needs label= and path=, knows steps, guidance, rule, runner")
    steps = tuple(int(s) for s in fields["steps"].split("-")) if "steps" in fields else None
    guidance = float(fields["guidance"]) if "guidance" in fields else None
    runner = fields.get("runner", "ours")
    if runner not in ("ours", "diffusers"):
        raise SystemExit(f"--variant {text!r}: runner must be ours or diffusers")
    return Variant(fields["label"], Path(fields["path"]), steps, guidance, fields.get("rule"), runner)


class OursRunner:
    def __init__(self, v: Variant) -> None:
        self.pipe = PyramidFlowPipeline.from_pretrained(v.path)
        c, s = self.pipe.config, self.pipe.config.sampling
        self.frames, self.height, self.width, self.travel = c.frames, c.height, c.width, c.travel_frames
        self.steps = tuple(v.steps or s.steps)
        self.guidance = s.guidance if v.guidance is None else v.guidance
        self.rule = v.rule or s.step_rule
        self.transform = self.pipe.transform
        self.config = dict(self.pipe.transformer.config)
        self.text_len = int(self.pipe.encode_prompt(["a"])[0].shape[1])
        self.latent = tuple(self.pipe.model_shape(1, self.frames, self.height, self.width)[2:])

    def __call__(self, prompt: str, seed: int) -> torch.Tensor:
        out = self.pipe(prompt, num_inference_steps=self.steps, guidance_scale=self.guidance,
                        video_guidance_scale=self.guidance, step_rule=self.rule, seed=seed,
                        output_type="pt", progress=False)
        return out.frames[0].cpu()  # (T, 3, H, W) in [0, 1]


class DiffusersRunner:
    def __init__(self, v: Variant) -> None:
        from diffusers import WanPipeline

        from pyramidflow.pyramid import HaarTransform

        self.pipe = WanPipeline.from_pretrained(v.path)
        gen = v.path / "generation.json"
        saved = json.loads(gen.read_text()) if gen.is_file() else {}
        self.frames = int(saved.get("num_frames", 17))
        self.height, self.width = int(saved.get("height", 32)), int(saved.get("width", 32))
        self.travel = saved.get("travel_frames")
        self.steps = (int(v.steps[0]) if v.steps else int(saved.get("num_inference_steps", 50)),)
        self.guidance = float(v.guidance if v.guidance is not None else saved.get("guidance_scale", 5.0))
        self.rule, self.transform = "diffusers", HaarTransform()
        self.config = dict(self.pipe.transformer.config)
        self.text_len = 512
        vae = self.pipe.vae.config
        self.latent = ((self.frames - 1) // vae.scale_factor_temporal + 1,
                       self.height // vae.scale_factor_spatial, self.width // vae.scale_factor_spatial)

    def __call__(self, prompt: str, seed: int) -> torch.Tensor:
        out = self.pipe(prompt=prompt, height=self.height, width=self.width, num_frames=self.frames,
                        num_inference_steps=self.steps[0], guidance_scale=self.guidance,
                        generator=torch.Generator().manual_seed(seed), output_type="pt").frames
        video = out[0] if isinstance(out, (list, tuple)) else out[0]
        video = torch.as_tensor(video).float()
        return video if video.shape[1] == 3 else video.permute(0, 3, 1, 2)


def measure(v: Variant, prompts: list[str], out: Path, reference_count: int, first_seed: int = 0) -> dict:
    run = DiffusersRunner(v) if v.runner == "diffusers" else OursRunner(v)
    guided = run.guidance != 1.0
    spec = TransformerSpec.from_config(run.config, text_len=run.text_len)
    flops = schedule_flops(spec, run.latent, run.steps, run.transform, cfg=guided)["total_tflops"]
    clips, start = [], time.perf_counter()
    for seed, prompt in enumerate(prompts, start=first_seed):
        clips.append(run(prompt, seed))
    seconds = (time.perf_counter() - start) / len(prompts)
    bounce = run.travel is not None and run.travel < run.frames - 1
    ref = ShapesDataset(height=run.height, width=run.width, num_frames=run.frames, length=reference_count,
                        split="val", bounce=bounce, travel_frames=run.travel, seed=1)
    reference = [ref[i]["video"] for i in range(reference_count)]
    scores = score_clips(clips, prompts, reference, travel_frames=run.travel)
    write_clips(out / v.label, torch.stack(clips), prompts, 8.0)
    row = {"label": v.label, "runner": v.runner, "steps": list(run.steps), "guidance": run.guidance,
           "rule": run.rule, "evaluations": sum(run.steps) * (2 if guided else 1),
           "tflops": flops, "seconds_per_clip": seconds, "frechet": scores["frechet"],
           **{k: scores["accuracy"].get(k) for k in KEYS}}
    (out / v.label / "metrics.json").write_text(json.dumps(row, indent=1))
    return row


def table(rows: list[dict]) -> str:
    head = "| variant | steps | NFE | TFLOPs | s/clip | " + " | ".join(KEYS) + " | Fréchet |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        acc = " | ".join("-" if r[k] is None else f"{r[k]:.2f}" for k in KEYS)
        fd = "-" if r["frechet"] is None else f"{r['frechet']:.3f}"
        steps = "-".join(str(s) for s in r["steps"])
        lines.append(f"| {r['label']} | {steps} | {r['evaluations']} | {r['tflops']:.4g} | "
                     f"{r['seconds_per_clip']:.2f} | {acc} | {fd} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, help="label=...,path=...[,steps=...]")
    p.add_argument("--demo", type=int, default=16, help="demo prompts (default 16)")
    p.add_argument("--heldout", type=int, default=32, help="held-out validation captions (default 32)")
    p.add_argument("--skip-heldout", type=int, default=0,
                   help="start at this held-out caption, seeds from it too (default 0)")
    p.add_argument("--reference", type=int, default=256, help="real clips for the Fréchet distance")
    p.add_argument("--out", default="outputs/variants")
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    first = DiffusersRunner(variants[0]) if variants[0].runner == "diffusers" else OursRunner(variants[0])
    travel = first.travel
    skip = args.skip_heldout
    held = ShapesDataset(height=first.height, width=first.width, num_frames=first.frames,
                         length=skip + args.heldout, split="val",
                         bounce=travel is not None and travel < first.frames - 1,
                         travel_frames=travel) if args.heldout else []
    prompts = demo_prompts(args.demo) + [held[i]["text"] for i in range(skip, skip + args.heldout)]
    out = Path(args.out)
    rows = [measure(v, prompts, out, args.reference, first_seed=skip) for v in variants]
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps({"prompts": prompts, "rows": rows}, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
