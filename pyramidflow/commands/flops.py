"""``pyramidflow flops``: tokens and TFLOPs per stage of a Wan-family transformer on a pyramid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PYRAMIDS = ("causal", "spatiotemporal", "spatial")
DEFAULTS = {"frames": 81, "height": 480, "width": 832, "steps": "20-20-10", "pyramid": "causal", "cfg": False}


def register(subparsers) -> None:
    from pyramidflow.flops import PRESETS

    p = subparsers.add_parser(
        "flops",
        help="count tokens and TFLOPs per stage (Wan transformer family)",
        description="Tokens and TFLOPs per stage and in total, counting 2 FLOPs per multiply-add in "
        "every linear layer and the attention products, one forward pass per step (docs/maths.md section 8).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a known model size")
    src.add_argument("--config", default=None, help="a transformer config.json (diffusers layout), its "
                     "folder, or a pipeline folder holding transformer/ (a Wan or pyramidal Wan pipeline); "
                     "a pyramidal pipeline's saved size, steps, guidance and pyramid are the defaults, a "
                     "WanPipeline's generation.json gives the size")
    p.add_argument("--frames", type=int, default=None,
                   help="video frames (1 + 4k for the Wan VAE; default 81)")
    p.add_argument("--height", type=int, default=None, help="default 480")
    p.add_argument("--width", type=int, default=None, help="default 832")
    p.add_argument("--steps", default=None,
                   help="steps per stage, coarse to fine, e.g. 20-20-10 (the default)")
    p.add_argument(
        "--pyramid", choices=PYRAMIDS, default=None,
        help="how a level lowers the latent: causal first frame (Wan, default), 2x2x2, or 2x2",
    )
    p.add_argument(
        "--patches", default=None, metavar="1x4x4,1x2x2",
        help="pyramidal patchification: one patch (t x h x w) per stage, coarse to fine, the last the "
        "model's own; every stage at full resolution (default: a PPF config.json's ppf_patch_sizes)",
    )
    p.add_argument("--text-len", type=int, default=512, help="text tokens (default 512)")
    p.add_argument("--cfg", action=argparse.BooleanOptionalAction, default=None,
                   help="count two forward passes per step (default: a pipeline's saved guidance > 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def compute(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    from pyramidflow.commands._parse import int_list
    from pyramidflow.flops import PRESETS, WAN_VAE, TransformerSpec, schedule_flops, spec_dict
    from pyramidflow.models.ppf import check_patch_sizes
    from pyramidflow.pyramid import HaarTransform, IdentityTransform

    vae = (_folder_vae(Path(args.config)) if args.config else None) or WAN_VAE
    saved = _folder_defaults(Path(args.config)) if args.config else {}
    unset = {k for k, v in vars(args).items() if v is None}
    fill = {k: saved[k] if saved.get(k) is not None else v for k, v in DEFAULTS.items() if k in unset}
    args = argparse.Namespace(**{**vars(args), **fill})  # flags, then the folder's values, then defaults
    if args.config:
        path = Path(args.config)
        if path.is_dir():
            path = path / "transformer" / "config.json" if (path / "model_index.json").is_file() else (
                path / "config.json")
        if not path.is_file():
            raise FileNotFoundError(f"transformer config not found: {path}")
        spec = TransformerSpec.from_config(json.loads(path.read_text()), text_len=args.text_len)
        name = str(path)
    else:
        name = args.preset or "wan2.1-t2v-1.3b"
        spec = replace(PRESETS[name], text_len=args.text_len)
    steps = int_list(args.steps, allow_zero=True)
    if args.patches is not None:
        spec = replace(spec, ppf_patch_sizes=check_patch_sizes(_patches(args.patches), spec.patch_size))
    pyramid = args.pyramid
    if spec.ppf_patch_sizes is not None:
        transform, pyramid = IdentityTransform(), "patchification"
    else:
        transform = HaarTransform(temporal=pyramid != "spatial", causal_first_frame=pyramid == "causal")
    latent = vae.latent_shape(args.frames, args.height, args.width)
    result = schedule_flops(spec, latent, steps, transform, cfg=args.cfg)
    full_tokens = result["per_stage"][-1]["tokens"]
    single = schedule_flops(spec, latent, [0] * (len(steps) - 1) + [sum(steps)], transform, cfg=args.cfg)
    result.update(
        model=name,
        spec=spec_dict(spec),
        video=[args.frames, args.height, args.width],
        latent_shape=list(latent),
        steps=list(steps),
        pyramid=pyramid,
        cfg=bool(args.cfg),
        full_resolution_tokens=full_tokens,
        single_stage_same_steps_tflops=single["total_tflops"],
    )
    return result


def run(args: argparse.Namespace) -> int:
    result = compute(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['model']}: video {'x'.join(map(str, result['video']))} -> latent "
        f"{'x'.join(map(str, result['latent_shape']))}, steps {'-'.join(map(str, result['steps']))}, "
        f"{result['pyramid']} pyramid, {2 if result['cfg'] else 1} forward pass(es) per step"
    )
    header = ("stage", "latent T x H x W", "patch", "tokens", "steps", "TFLOPs/step", "TFLOPs")
    print("{:>5} {:>18} {:>7} {:>8} {:>5} {:>12} {:>10}".format(*header))
    for s in result["per_stage"]:
        shape, patch = "x".join(map(str, s["latent_shape"])), "x".join(map(str, s["patch_size"]))
        print(
            f"{s['stage']:>5} {shape:>18} {patch:>7} {s['tokens']:>8} {s['steps']:>5} "
            f"{_num(s['tflops_per_step']):>12} {_num(s['tflops']):>10}"
        )
    total, single = result["total_tflops"], result["single_stage_same_steps_tflops"]
    saving = 100.0 * (1.0 - total / single) if single else 0.0
    print(f"total: {_num(total)} TFLOPs ({saving:.0f}% less than {sum(result['steps'])} full-resolution "
          f"steps: {_num(single)} TFLOPs)")
    return 0


def _num(value: float) -> str:
    """TFLOPs for reading: one decimal from 1 up (2821.3), four significant digits below (0.0008095)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.4g}"


def _folder_vae(path: Path):
    """The compression of a pipeline folder's own VAE (``vae/config.json``: ``scale_factor_temporal``
    and ``scale_factor_spatial``, as diffusers' AutoencoderKLWan writes them), or None (Wan's 4x8x8)."""
    from pyramidflow.flops import VideoAutoencoderSpec

    config = path / "vae" / "config.json" if path.is_dir() else None
    if config is None or not config.is_file():
        return None
    vae = json.loads(config.read_text())
    if "scale_factor_temporal" not in vae or "scale_factor_spatial" not in vae:
        return None
    return VideoAutoencoderSpec(temporal=int(vae["scale_factor_temporal"]),
                                spatial=int(vae["scale_factor_spatial"]))


def _folder_defaults(path: Path) -> dict:
    """What a pipeline folder was saved for: a pyramidal pipeline's ``model_index.json`` config (size,
    steps per stage, guidance, how its levels lower the latent) or a WanPipeline's ``generation.json``
    (size only: the steps default stays a pyramid's, the cost of converting it)."""
    if not path.is_dir():
        return {}
    if (path / "generation.json").is_file():
        gen = json.loads((path / "generation.json").read_text())
        return {k: gen[g] for k, g in (("frames", "num_frames"), ("height", "height"), ("width", "width"))
                if g in gen}
    from pyramidflow.config import from_dict
    from pyramidflow.pipelines.config import PipelineConfig

    index = path / "model_index.json"
    saved = json.loads(index.read_text()).get("config") if index.is_file() else None
    if not isinstance(saved, dict) or "sampling" not in saved:
        return {}
    cfg = from_dict(PipelineConfig, saved)
    lowering = ("spatial" if not cfg.pyramid.temporal else
                "causal" if cfg.pyramid.causal_first_frame else "spatiotemporal")
    return {"frames": cfg.frames, "height": cfg.height, "width": cfg.width,
            "steps": "-".join(str(int(n)) for n in cfg.sampling.steps), "pyramid": lowering,
            "cfg": cfg.sampling.guidance > 1.0}


def _patches(text: str) -> list[list[int]]:
    """"1x4x4,1x2x2" -> [[1, 4, 4], [1, 2, 2]] (a one-line error for anything else)."""
    from pyramidflow.errors import PyramidflowError

    try:
        patches = [[int(q) for q in item.split("x")] for item in text.split(",")]
    except ValueError:
        patches = []
    if not patches or any(len(p) != 3 for p in patches):
        raise PyramidflowError(f"--patches must list t x h x w patches, coarse to fine, e.g. 1x4x4,1x2x2; "
                               f"got {text!r}")
    return patches
