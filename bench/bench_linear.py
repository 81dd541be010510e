"""Few-row products on the CPU: ``F.linear(x, W, b)`` against ``(W x^T)^T`` (``addmm``), the choice
:mod:`pyramidflow.models.linear` makes for few rows and large weights.

    python bench/bench_linear.py [--threads 2] [--repeats 9]

Prints, per weight shape (out x in) and row count, the median milliseconds of both orders and the
speed-up of the second (> 1: faster), calls interleaved. The rows marked * are where
``pyramidflow.models.linear.Linear`` uses the second order.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from pyramidflow.models.linear import FEW_ROWS, LARGE_WEIGHT

SHAPES = ((128, 128), (512, 128), (384, 1536), (1536, 1536), (8960, 1536), (1536, 8960))
ROWS = (20, 80, 320, 1024, 4096)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| weight (out x in) | rows | F.linear ms | (W x^T)^T ms | speed-up |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    for out_f, in_f in SHAPES:
        w, b = torch.randn(out_f, in_f), torch.randn(out_f)
        for rows in ROWS:
            x = torch.randn(rows, in_f)
            fns = {"linear": lambda x=x, w=w, b=b: F.linear(x, w, b),
                   "addmm": lambda x=x, w=w, b=b: torch.addmm(b[:, None], w, x.T).T}
            times: dict = {k: [] for k in fns}
            for fn in fns.values():
                fn()
            for _ in range(args.repeats):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            a, c = (statistics.median(times[k]) * 1e3 for k in ("linear", "addmm"))
            used = "*" if rows <= FEW_ROWS and out_f * in_f >= LARGE_WEIGHT else ""
            print(f"| {out_f} x {in_f} | {rows}{used} | {a:.2f} | {c:.2f} | {a / c:.2f} |", flush=True)


if __name__ == "__main__":
    main()
