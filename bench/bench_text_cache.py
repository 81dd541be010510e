"""Benchmark: the text cache (cross-attention keys/values of the prompt computed once; docs/maths.md
sections 13 and 15).

1. ``wan``: PyramidDiT at the real Wan2.1-T2V-1.3B transformer config (width 1536, 12 heads x 128,
   FFN 8960, text 512 x 4096, patch 1x2x2), random weights, on the three stages of a small video
   (17 frames at 128x128: a 5x16x16 latent, spatial pyramid: 20 / 80 / 320 tokens). Forward time
   with the text recomputed against the text cache, at a few layer counts (``--layers 1,3``), and
   extrapolated linearly to the real 30 layers; beside it the FLOP share of the text (15.2).
2. ``demo``: the shipped model's demo sampling (32 prompts, CFG, autoregressive, history cache)
   with and without the text cache: FLOPs counted by PyTorch's FLOP counter and wall time.

Each timing is the median (and the minimum) of ``--repeats`` interleaved calls: cached and
recomputed alternate, so a change in machine load hits both alike; on a busy machine the minimum is
the better estimate of the uncontended time.

    python bench/bench_text_cache.py [--parts wan,demo] [--layers 1,3] [--dtype fp32|bf16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from pyramidflow.flops import PRESETS, forward_flops, text_flops

WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, cross_attn_norm=True, eps=1e-6)
STAGES = ((5, 4, 4), (5, 8, 8), (5, 16, 16))  # latent (F, H, W) per stage of a 17x128x128 video
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _interleaved(fns: dict, repeats: int) -> dict:
    """{name: (median, min) seconds} of each callable, calls alternating, after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


@torch.no_grad()
def wan(layer_counts, batch: int, dtype: torch.dtype, repeats: int, stages=STAGES) -> dict:
    from pyramidflow.models import PyramidDiT

    text = torch.randn(batch, 512, 4096, generator=torch.Generator().manual_seed(0)).to(dtype)
    t = torch.full((batch,), 700.0)
    rows = []
    for layers in layer_counts:
        torch.manual_seed(0)
        model = PyramidDiT(**WAN_13B, num_layers=layers).eval()
        if dtype != torch.float32:
            model.to(dtype)
        build = _interleaved({"build": lambda m=model: m.build_text_cache(text)}, repeats)["build"]
        cache = model.build_text_cache(text)
        for f, h, w in stages:
            x = torch.randn(batch, 16, f, h, w, generator=torch.Generator().manual_seed(1)).to(dtype)
            same = torch.equal(model(x, t, text).sample, model(x, t, text, text_cache=cache).sample)
            times = _interleaved({"recompute": lambda m=model, x=x: m(x, t, text),
                                  "cached": lambda m=model, x=x, c=cache: m(x, t, text, text_cache=c)}, repeats)
            rows.append(dict(layers=layers, tokens=f * h * w // 4, recompute_s=times["recompute"][0],
                             cached_s=times["cached"][0], recompute_min_s=times["recompute"][1],
                             cached_min_s=times["cached"][1], build_s=build[0], identical=same))
        del model, cache
    spec = PRESETS["wan2.1-t2v-1.3b"]
    out = []
    for f, h, w in stages:
        n = f * h * w // 4
        mine = sorted((r for r in rows if r["tokens"] == n), key=lambda r: r["layers"])
        row = dict(tokens=n, measured=mine, text_flop_share_30=text_flops(spec) / forward_flops(spec, n))
        if len(mine) >= 2:  # t(L) = a + L b, fitted through the smallest and largest layer counts
            lo, hi = mine[0], mine[-1]
            for key in ("recompute_s", "cached_s", "recompute_min_s", "cached_min_s"):
                slope = (hi[key] - lo[key]) / (hi["layers"] - lo["layers"])
                row[f"{key}_30"] = lo[key] + slope * (spec.num_layers - lo["layers"])
            row["reduction_30"] = 1 - row["cached_s_30"] / row["recompute_s_30"]
            row["reduction_min_30"] = 1 - row["cached_min_s_30"] / row["recompute_min_s_30"]
        out.append(row)
    return dict(batch=batch, dtype=str(dtype).replace("torch.", ""), stages=out)


def demo(repeats: int, prompts: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from pyramidflow.demo import DEFAULT_CHECKPOINT, demo_prompts
    from pyramidflow.pipelines import PyramidFlowPipeline

    pipe = PyramidFlowPipeline.from_pretrained(DEFAULT_CHECKPOINT)
    texts = demo_prompts()[:prompts]
    model = pipe.transformer

    def run(cached: bool, batch=texts):
        if not cached:  # an instance attribute of None hides the method: the velocity functions recompute
            model.build_text_cache = None
        try:
            return pipe(batch, seed=0, output_type="pt", progress=False).latents
        finally:
            if not cached:
                del model.build_text_cache

    flops = {}
    for cached in (False, True):
        counter = FlopCounterMode(display=False)
        with counter:
            run(cached, texts[:2])
        flops[cached] = counter.get_total_flops()
    same = torch.equal(run(False), run(True))
    times = _interleaved({"recompute": lambda: run(False), "cached": lambda: run(True)}, repeats)
    return dict(prompts=len(texts), flops_recompute=flops[False], flops_cached=flops[True],
                flop_reduction=1 - flops[True] / flops[False], recompute_s=times["recompute"][0],
                cached_s=times["cached"][0], time_reduction=1 - times["cached"][0] / times["recompute"][0],
                recompute_min_s=times["recompute"][1], cached_min_s=times["cached"][1], identical=same)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="wan,demo", help="comma-separated subset of: wan, demo")
    ap.add_argument("--layers", default="1,3", help="layer counts to time (the fit uses the extremes)")
    ap.add_argument("--batch", type=int, default=1, help="batch of the Wan forward (2: a CFG pair)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="1 and 2 layers, 2 repeats, 4 demo prompts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [1, 2] if args.quick else [int(v) for v in args.layers.split(",")]
    repeats = 2 if args.quick else args.repeats
    parts = set(args.parts.split(","))
    load = os.getloadavg()
    result = dict(machine=f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, load average at start {load[0]:.1f}")
    if "wan" in parts:
        result["wan"] = wan(layers, args.batch, DTYPES[args.dtype], repeats)
    if "demo" in parts:
        result["demo"] = demo(repeats, 4 if args.quick else 32)
    result["load_at_end"] = round(os.getloadavg()[0], 1)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(result["machine"], f"(load average at end {result['load_at_end']})")
    if "wan" in result:
        w = result["wan"]
        print(f"\nWan2.1-1.3B config, random weights, batch {w['batch']}, {w['dtype']}, 512 text tokens")
        print("median (min) seconds per forward; reduction = 1 - cached / recomputed")
        print(f"{'tokens':>7}{'layers':>7}{'recompute s':>18}{'cached s':>18}{'reduction':>16}{'build s':>9}"
              f"{'identical':>10}")
        for s in w["stages"]:
            for r in s["measured"]:
                print(f"{r['tokens']:>7}{r['layers']:>7}{r['recompute_s']:>9.3f} ({r['recompute_min_s']:.3f})"
                      f"{r['cached_s']:>9.3f} ({r['cached_min_s']:.3f})"
                      f"{1 - r['cached_s'] / r['recompute_s']:>8.1%} ({1 - r['cached_min_s'] / r['recompute_min_s']:.1%})"
                      f"{r['build_s']:>9.3f}{str(r['identical']):>10}")
            if "reduction_30" in s:
                print(f"{s['tokens']:>7}{'30*':>7}{s['recompute_s_30']:>9.3f} ({s['recompute_min_s_30']:.3f})"
                      f"{s['cached_s_30']:>9.3f} ({s['cached_min_s_30']:.3f})"
                      f"{s['reduction_30']:>8.1%} ({s['reduction_min_30']:.1%})"
                      f"   text FLOP share at 30 layers {s['text_flop_share_30']:.1%}")
        print("* linear fit through the smallest and largest measured layer counts")
    if "demo" in result:
        d = result["demo"]
        print(f"\nDemo sampling ({d['prompts']} prompts): FLOPs {d['flops_recompute'] / 1e9:.2f} -> "
              f"{d['flops_cached'] / 1e9:.2f} GFLOP per 2 prompts ({d['flop_reduction']:.1%} less); "
              f"time {d['recompute_s']:.2f} -> {d['cached_s']:.2f} s ({d['time_reduction']:.1%} less; min "
              f"{d['recompute_min_s']:.2f} -> {d['cached_min_s']:.2f} s); "
              f"identical latents: {d['identical']}")


if __name__ == "__main__":
    main()
