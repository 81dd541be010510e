"""Benchmark: bfloat16 against float32 for PyramidDiT on this machine, and the demo's accuracy in bf16.

1. ``forward``: one forward pass (batch 2, a CFG pair; 64 text tokens) at several widths, in float32,
   with the weights cast to bf16 (``move_module``: float32-only parameters stay float32; what
   ``--dtype bf16`` does) and with float32 weights under ``torch.autocast("cpu", torch.bfloat16)``;
   median of ``--repeats`` interleaved calls, and the largest difference to float32 relative to the
   largest float32 output.
2. ``demo``: the shipped model's demo (32 prompts) sampled in float32 and in bf16: sampling time,
   evaluator accuracies, Fréchet distance, and the pixel difference between the two.

bf16 pays off only where the hardware multiplies bf16 natively (CUDA; CPUs with avx512_bf16 or AMX);
elsewhere PyTorch converts to float32 around every product and bf16 is slower. The script prints
which case this CPU is.

    python bench/bench_dtype.py [--parts forward,demo] [--widths 128,384,768,1536] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time

import torch

SIZES = {128: (4, 32, 512), 384: (6, 64, 1536), 768: (12, 64, 3072), 1536: (12, 128, 8960)}  # heads, dim, ffn


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    mine = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(mine) or "none of avx2 / avx512"


@torch.no_grad()
def forward(widths, layers: int, tokens: int, repeats: int) -> list[dict]:
    from pyramidflow.models import PyramidDiT
    from pyramidflow.pipelines.loading import move_module

    rows = []
    side = int(round((tokens / 4) ** 0.5))  # 4 latent frames of side x side tokens (2x2 patches)
    t = torch.tensor([700.0, 700.0])
    for width in widths:
        heads, head_dim, ffn = SIZES[width]
        cfg = dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
                   out_channels=16, text_dim=256, freq_dim=256, ffn_dim=ffn, num_layers=layers)
        torch.manual_seed(0)
        fp32 = PyramidDiT(**cfg).eval()
        bf16 = PyramidDiT(**cfg).eval()
        bf16.load_state_dict(fp32.state_dict())
        move_module(bf16, "cpu", torch.bfloat16)
        gen = torch.Generator().manual_seed(1)
        x, text = torch.randn(2, 16, 4, 2 * side, 2 * side, generator=gen), torch.randn(2, 64, 256, generator=gen)

        def autocast(x=x, text=text, m=fp32):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x, t, text).sample

        fns = {"fp32": lambda x=x, text=text, m=fp32: m(x, t, text).sample,
               "bf16 weights": lambda x=x, text=text, m=bf16: m(x, t, text.bfloat16()).sample,
               "fp32 + autocast": autocast}
        ref = fns["fp32"]()
        err = {k: float((fn().float() - ref).abs().max() / ref.abs().max()) for k, fn in fns.items()}
        times: dict = {k: [] for k in fns}
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(dict(width=width, layers=layers, tokens=4 * side * side, seconds=med, rel_err=err))
    return rows


def demo(prompts: int) -> dict:
    from pyramidflow.demo import DEFAULT_CHECKPOINT, demo_prompts, run_demo
    from pyramidflow.pipelines import PyramidFlowPipeline

    out, videos = {}, {}
    texts = demo_prompts()[:prompts]
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        pipe = PyramidFlowPipeline.from_pretrained(DEFAULT_CHECKPOINT, torch_dtype=dtype)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_demo(pipe, tmp, prompts=texts, progress=False)
        videos[name] = pipe(texts, seed=0, output_type="pt", progress=False).frames
        out[name] = dict(sample_s=metrics["sample_seconds"], accuracy=metrics["accuracy"], frechet=metrics["frechet"])
    diff = (videos["bf16"] - videos["fp32"]).abs()
    out["pixel_diff_mean"], out["pixel_diff_max"] = float(diff.mean()), float(diff.max())
    out["pixels_off_by_0.1"] = float((diff > 0.1).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="forward,demo")
    ap.add_argument("--widths", default="128,384,768,1536")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1024, help="video tokens per forward (4 frames)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    print(f"{platform.processor() or platform.machine()}, CPU flags: {cpu_flags()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    if "forward" in parts:
        rows = forward([int(w) for w in args.widths.split(",")], args.layers, args.tokens, args.repeats)
        print(f"\nForward pass, batch 2, {args.layers} layers, {rows[0]['tokens']} video tokens, 64 text tokens; "
              "median s (speed-up vs fp32) [max |diff| / max |fp32|]")
        print("| width | fp32 | bf16 weights | fp32 + autocast bf16 |")
        print("|---|---|---|---|")
        for r in rows:
            s, e = r["seconds"], r["rel_err"]
            cells = [f"{s[k]:.3f} ({s['fp32'] / s[k]:.2f}x) [{e[k]:.1e}]" for k in ("bf16 weights", "fp32 + autocast")]
            print(f"| {r['width']} | {s['fp32']:.3f} | {cells[0]} | {cells[1]} |")
        with contextlib.suppress(Exception):
            print(f"oneDNN bf16 support reported by PyTorch: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    if "demo" in parts:
        d = demo(args.prompts)
        print(f"\nDemo ({args.prompts} prompts), shipped model")
        print("| dtype | sampling s | colour | shape | direction | background | all | FD |")
        print("|---|---|---|---|---|---|---|---|")
        for name in ("fp32", "bf16"):
            a = d[name]["accuracy"]
            print(f"| {name} | {d[name]['sample_s']:.1f} | {a['color']:.2f} | {a['shape']:.2f} | {a['direction']:.2f} "
                  f"| {a['background']:.2f} | {a['all']:.2f} | {d[name]['frechet']:.3f} |")
        print(f"bf16 - fp32 pixels: mean |diff| {d['pixel_diff_mean']:.4f}, max {d['pixel_diff_max']:.3f}, "
              f"share off by > 0.1: {d['pixels_off_by_0.1']:.4f}")


if __name__ == "__main__":
    main()
