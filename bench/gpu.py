"""GPU benchmark at the paper's shapes: per-stage transformer latency of pyramidal sampling.

PyramidDiT with the Wan2.1-T2V-1.3B transformer config (patch 1x2x2, 12 heads x 128, 16 latent
channels, text 4096 x 512 tokens, freq 256, FFN 8960, 30 layers; random weights unless
``--checkpoint``) on 81-frame videos at 448x832 and 480x832 (latents 21 x 56 x 104 and 21 x 60 x 104
after Wan's VAE, docs/maths.md section 8). For each stage of a 3-stage spatial pyramid: the latency
of one transformer call, the calls per schedule (20-20-10, 2-2-1, and 0-0-50 = single-stage flow
matching at full resolution), peak memory, tokens/s and achieved TFLOP/s (pyramidflow.flops,
docs/maths.md section 15), beside diffusers' ``WanTransformer3DModel`` with the same config and
weights on the same device and inputs. PyramidDiT runs as the pipeline does (text keys/values cached
once per prompt, docs/maths.md section 13); Wan recomputes them at every call, as it must.

A stage whose latent cannot be halved enough times for 2x2 patches is reported as not fitting
(480 / 8 = 60 latent rows: the coarsest of 3 stages would have 15, an odd number of patches).

    python bench/gpu.py                                # one GPU, bf16, both shapes, JSON beside
    python bench/gpu.py --checkpoint DIR --compile     # real weights; torch.compile per stage
    python bench/gpu.py --tiny --device cpu            # smoke test: a tiny model, seconds on a CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                cross_attn_norm=True, eps=1e-6)
TINY = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64,
            num_layers=2)
SHAPES = {"paper": [(81, 448, 832), (81, 480, 832)], "tiny": [(9, 64, 64)]}  # frames, height, width
SCHEDULES = {"20-20-10": (20, 20, 10), "0-0-50": (0, 0, 50), "2-2-1": (2, 2, 1)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, float | None]:
    """Median seconds per call and peak memory (GiB, CUDA only) of ``fn()``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def build_models(config: dict, device, dtype, checkpoint: str | None, attention: str):
    """PyramidDiT (random or from ``checkpoint``) and a WanTransformer3DModel holding its weights."""
    import inspect

    from diffusers import WanTransformer3DModel

    from pyramidflow.models import PyramidDiT
    from pyramidflow.pipelines.loading import move_module

    torch.manual_seed(0)
    if checkpoint:
        ours = PyramidDiT.from_pretrained(checkpoint, attention_backend=attention)
    else:
        ours = PyramidDiT(**config, attention_backend=attention)
    keys = set(inspect.signature(WanTransformer3DModel.__init__).parameters)
    wan = WanTransformer3DModel(**{k: v for k, v in ours.config.items() if k in keys})
    wan.load_state_dict(ours.state_dict())
    for model in (ours, wan):  # 16-bit weights, float32 norms and modulation tables (as the pipeline)
        move_module(model, device, dtype)
    return ours.eval(), wan.eval()


def stage_shapes(frames: int, height: int, width: int, stages: int = 3) -> list[tuple[int, int, int] | str]:
    """Latent (T, H, W) per stage, coarse to fine, or why a stage does not fit 2x2 patches."""
    from pyramidflow.flops import WAN_VAE

    t, h, w = WAN_VAE.latent_shape(frames, height, width)
    out = []
    for stage in range(stages):
        f = 2 ** (stages - 1 - stage)
        if h % (2 * f) or w % (2 * f):
            out.append(f"latent {h}x{w} / {f} is not a whole number of 2x2 patches")
        else:
            out.append((t, h // f, w // f))
    return out


@torch.no_grad()
def bench_shape(models, video: tuple[int, int, int], text_len: int, args) -> dict:
    from pyramidflow.flops import TransformerSpec, forward_flops

    ours, wan = models
    device, dtype = next(ours.parameters()).device, ours.patch_embedding.weight.dtype
    spec = TransformerSpec.from_config(ours.config, text_len=text_len)
    text = torch.randn(args.batch, text_len, ours.config.text_dim, device=device, dtype=dtype)
    text_cache = ours.build_text_cache(text)
    stages = []
    for stage, shape in enumerate(stage_shapes(*video)):
        row = {"stage": stage, "latent": shape}
        if isinstance(shape, str):
            stages.append(row)
            continue
        x = torch.randn(args.batch, ours.config.in_channels, *shape, device=device, dtype=dtype)
        t = torch.full((args.batch,), 500.0, device=device)
        tokens = shape[0] * (shape[1] // 2) * (shape[2] // 2)
        row.update(tokens=tokens)
        runs = {"pyramiddit": (ours, lambda m, x=x, t=t: m(x, t, None, text_cache=text_cache, return_dict=False)),
                "wan": (wan, lambda m, x=x, t=t: m(x, t, text, return_dict=False))}
        for name, (model, call) in runs.items():
            if args.compile:  # static shapes: one graph per stage
                model = torch.compile(model, dynamic=False)
            seconds, peak = _measure(lambda m=model, c=call: c(m), device, args.warmup, args.repeats)
            flops = forward_flops(spec, tokens, cached_text=name == "pyramiddit") * args.batch
            row[name] = dict(ms=seconds * 1e3, peak_gib=peak, tokens_per_s=args.batch * tokens / seconds,
                             tflops_per_s=flops / seconds / 1e12)
        stages.append(row)
    schedules = {}
    for label, steps in SCHEDULES.items():
        entry = {}
        for name in ("pyramiddit", "wan"):
            needed = [s for s, n in zip(stages, steps, strict=True) if n]
            if any(name not in s for s in needed):
                entry[name] = None  # a stage with steps does not fit this shape
                continue
            entry[name] = {"per_stage_s": [n * s[name]["ms"] / 1e3 if n else 0.0
                                           for s, n in zip(stages, steps, strict=True)]}
            entry[name]["total_s"] = sum(entry[name]["per_stage_s"])
        schedules[label] = entry
    return {"video": list(video), "text_tokens": text_len, "stages": stages, "schedules": schedules}


def _print(result: dict) -> None:
    print(result["machine"])
    for shape in result["shapes"]:
        f, h, w = shape["video"]
        print(f"\n{f}x{h}x{w}, batch {result['batch']}, {result['dtype']}, {shape['text_tokens']} text tokens")
        print(f"{'stage':>5} {'latent':>14} {'tokens':>7} {'ours ms':>9} {'Wan ms':>9} {'ours tok/s':>11} "
              f"{'ours TFLOP/s':>12} {'ours GiB':>9} {'Wan GiB':>8}")
        for s in shape["stages"]:
            if "tokens" not in s:
                print(f"{s['stage']:>5}  {s['latent']}")
                continue
            o, wn = s["pyramiddit"], s["wan"]
            gib = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            print(f"{s['stage']:>5} {'x'.join(map(str, s['latent'])):>14} {s['tokens']:>7} {o['ms']:>9.2f} "
                  f"{wn['ms']:>9.2f} {o['tokens_per_s']:>11.0f} {o['tflops_per_s']:>12.2f} "
                  f"{gib(o['peak_gib']):>9} {gib(wn['peak_gib']):>8}")
        for label, entry in shape["schedules"].items():
            parts = [f"{name} " + ("does not fit" if v is None else f"{v['total_s']:.2f} s")
                     for name, v in entry.items()]
            print(f"  schedule {label:>8}: " + ", ".join(parts))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model at 9x64x64 (smoke test, CPU)")
    ap.add_argument("--device", default=None, help="default: cuda")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on cuda, else fp32")
    ap.add_argument("--checkpoint", default=None, help="a PyramidDiT / Wan transformer folder (real weights)")
    ap.add_argument("--attention", default="auto", help="PyramidDiT attention backend (auto, sdpa, flex)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models (static shapes per stage)")
    ap.add_argument("--batch", type=int, default=1, help="2 = a guided (CFG) batch")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the results here (default bench/gpu-RESULTS.json "
                    "on a GPU, nothing for --tiny)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device here; use --tiny --device cpu for the smoke test")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda"
                                                                           else "fp32")]
    models = build_models(TINY if args.tiny else WAN_1_3B, device, dtype, args.checkpoint, args.attention)
    text_len = 8 if args.tiny else 512
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = dict(machine=f"{gpu}, torch {torch.__version__}", date=datetime.date.today().isoformat(),
                  config="tiny" if args.tiny else "wan2.1-t2v-1.3b", checkpoint=args.checkpoint,
                  dtype=str(dtype).removeprefix("torch."), batch=args.batch, compile=args.compile,
                  attention=args.attention,
                  shapes=[bench_shape(models, v, text_len, args) for v in SHAPES["tiny" if args.tiny else "paper"]])
    _print(result)
    path = args.json or (None if args.tiny else str(Path(__file__).with_name("gpu-RESULTS.json")))
    if path:
        Path(path).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
