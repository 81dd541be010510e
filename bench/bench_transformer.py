"""Benchmark: PyramidDiT on the CPU (docs/maths.md section 7).

1. Forward throughput (tokens/s) of PyramidDiT against diffusers' WanTransformer3DModel with the
   same config and weights, several sizes (target: ratio >= 1.0).
2. Peak memory of one block-causal attention call at long sequences: a dense boolean mask
   (what the reference builds) against PyramidDiT's grouped plan (no mask), in fresh processes.
3. The history cache in a simulated autoregressive unit (stages x steps): recomputing the
   history at every step (the reference) against keys/values cached once per stage.

    python bench/bench_transformer.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from functools import partial

import torch

SIZES = {  # name: (layers, heads, head_dim, ffn, latent (C, F, H, W))
    "small": (2, 4, 32, 512, (16, 4, 32, 32)),
    "medium": (4, 8, 64, 2048, (16, 4, 32, 32)),
    "large": (4, 12, 64, 3072, (16, 8, 32, 32)),
}


def _config(layers, heads, head_dim, ffn, channels):
    return dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                in_channels=channels, out_channels=channels, text_dim=256, freq_dim=256, ffn_dim=ffn,
                num_layers=layers)


def _time(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


@torch.no_grad()
def throughput(sizes, repeats):
    from diffusers import WanTransformer3DModel

    from pyramidflow.models import PyramidDiT

    rows = []
    for name in sizes:
        layers, heads, head_dim, ffn, (c, f, h, w) = SIZES[name]
        torch.manual_seed(0)
        wan = WanTransformer3DModel(**_config(layers, heads, head_dim, ffn, c)).eval()
        ours = PyramidDiT(**_config(layers, heads, head_dim, ffn, c)).eval()
        ours.load_state_dict(wan.state_dict())
        x, t, text = torch.randn(1, c, f, h, w), torch.tensor([500.0]), torch.randn(1, 64, 256)
        tokens = f * (h // 2) * (w // 2)
        diff = (wan(x, t, text).sample - ours(x, t, text).sample).abs().max().item()
        tw, to = [], []
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            tw.append(_time(partial(wan, x, t, text), 1))
            to.append(_time(partial(ours, x, t, text), 1))
        mw, mo = statistics.median(tw), statistics.median(to)
        rows.append(dict(size=name, width=heads * head_dim, layers=layers, tokens=tokens,
                         wan_tok_s=tokens / mw, ours_tok_s=tokens / mo, ratio=mw / mo, max_abs_diff=diff))
    return rows


_MEM_CHILD = r"""
import sys, time, torch
from pyramidflow.models.attention import AttentionLayout, attend

def status(key):  # kB
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

torch.set_num_threads(int(sys.argv[4]))
s, units, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
heads, dim = 8, 64
q, k, v = (torch.randn(1, s, heads, dim) for _ in range(3))
ids = torch.arange(s) * units // s
zero = torch.zeros_like(ids)
layout = AttentionLayout(zero, ids, zero, ids)
if mode == "dense":
    layout.kind = "dense"
attend(q[:, :256], k[:, :256], v[:, :256], None, "sdpa")  # warm-up
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident size (Linux)
base = status("VmRSS")
t0 = time.perf_counter()
out = attend(q, k, v, layout, "sdpa")
dt = time.perf_counter() - t0
print((status("VmHWM") - base) / 1024, dt)
"""


def attention_memory(lengths, units, threads):
    rows = []
    for s in lengths:
        row = dict(tokens=s, units=units)
        for mode in ("dense", "grouped"):
            out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(s), str(units), mode, str(threads)],
                                 capture_output=True, text=True, check=True).stdout.split()
            row[f"{mode}_mib"], row[f"{mode}_s"] = float(out[0]), float(out[1])
        row["mask_mib"] = s * s / 2**20
        rows.append(row)
    return rows


@torch.no_grad()
def history_cache(steps, history_units, repeats):
    """One unit after ``history_units`` units, 3 stages, latent 16x32x32 per unit, patch 1x2x2."""
    from pyramidflow.models import PyramidDiT, TokenSegment
    from pyramidflow.pyramid.temporal import history_levels

    torch.manual_seed(0)
    model = PyramidDiT(**_config(4, 8, 64, 2048, 16)).eval()
    text = torch.randn(1, 64, 256)
    full = [torch.randn(1, 16, 1, 32, 32) for _ in range(history_units)]
    k = 3

    def segments(stage):
        levels = history_levels(history_units, stage, k)
        hist = [TokenSegment.at_level(full[u][..., :: 2**lv, :: 2**lv], 0.0, u, lv, frame_offset=u)
                for u, lv in enumerate(levels)]
        cur_level = k - 1 - stage
        size = 32 // 2**cur_level
        cur = TokenSegment.at_level(torch.randn(1, 16, 1, size, size), 500.0, history_units, cur_level,
                                    frame_offset=history_units)
        return hist, cur

    def run(cached, check=False):
        diff = 0.0
        for stage in range(k):
            hist, cur = segments(stage)
            cache = model.build_history_cache(hist, text) if cached else None
            for _ in range(steps):
                if cached:
                    out = model.forward_tokens([cur], text, cache=cache)[0]
                else:
                    out = model.forward_tokens([*hist, cur], text)[-1]
            if check:
                ref = model.forward_tokens([*hist, cur], text)[-1]
                diff = max(diff, (out - ref).abs().max().item())
        return diff

    hist_tokens = [sum(256 // 4**lv for lv in history_levels(history_units, s, k)) for s in range(k)]
    recompute = _time(lambda: run(False), repeats)
    cached = _time(lambda: run(True), repeats)
    diff = run(True, check=True)
    return dict(stages=k, steps_per_stage=steps, history_units=history_units, history_tokens=hist_tokens,
                current_tokens=[256 // 4 ** (k - 1 - s) for s in range(k)], recompute_s=recompute,
                cached_s=cached, speedup=recompute / cached, max_abs_diff=diff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--parts", default="throughput,memory,cache",
                    help="comma-separated subset of: throughput, memory, cache")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3 quick, 7 full)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quick, parts = args.quick, set(args.parts.split(","))
    repeats = args.repeats or (3 if quick else 7)
    result = dict(
        machine=f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads",
        throughput=throughput(["small"] if quick else list(SIZES), repeats) if "throughput" in parts else [],
        attention_memory=(attention_memory([2048, 4096] if quick else [4096, 8192, 16384], 8, args.threads)
                          if "memory" in parts else []),
        history_cache=(history_cache(2 if quick else 10, 4 if quick else 8, 1 if quick else 3)
                       if "cache" in parts else None),
    )
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(result["machine"])
    print("\nForward throughput (batch 1, 64 text tokens, no grad)")
    print(f"{'size':8}{'width':>6}{'layers':>7}{'tokens':>8}{'Wan tok/s':>11}{'ours tok/s':>11}{'ratio':>7}"
          f"{'max|diff|':>11}")
    for r in result["throughput"]:
        print(f"{r['size']:8}{r['width']:>6}{r['layers']:>7}{r['tokens']:>8}{r['wan_tok_s']:>11.0f}"
              f"{r['ours_tok_s']:>11.0f}{r['ratio']:>7.2f}{r['max_abs_diff']:>11.1e}")
    print("\nBlock-causal attention, 8 heads x 64, one call: peak resident memory above q/k/v (MiB), time (s)")
    print(f"{'tokens':>8}{'units':>6}{'mask MiB':>10}{'dense MiB':>10}{'grouped MiB':>12}{'dense s':>9}"
          f"{'grouped s':>10}")
    for r in result["attention_memory"]:
        print(f"{r['tokens']:>8}{r['units']:>6}{r['mask_mib']:>10.0f}{r['dense_mib']:>10.0f}"
              f"{r['grouped_mib']:>12.0f}{r['dense_s']:>9.3f}{r['grouped_s']:>10.3f}")
    h = result["history_cache"]
    if h is None:
        return
    print(f"\nHistory cache: {h['history_units']} history units, {h['stages']} stages x {h['steps_per_stage']} "
          f"steps, history tokens per stage {h['history_tokens']}, current {h['current_tokens']}")
    print(f"recompute every step {h['recompute_s']:.2f} s, cached {h['cached_s']:.2f} s, "
          f"speed-up {h['speedup']:.2f}x, max |cached - recomputed| {h['max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()
