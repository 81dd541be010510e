"""Benchmark: `pyramidflow demo` (the whole command, in a fresh process) under OpenMP settings, on an
idle machine and on one kept busy by other processes.

PyTorch's CPU build parallelises with OpenMP (libgomp on Linux); by default its idle worker threads
spin for a while before sleeping, which is fast when the cores are free and very slow when other
processes want them (the spinning threads take the cores the working ones need). The command line
chooses its own defaults before torch loads (``pyramidflow.cli.thread_defaults``); this script
measures them against PyTorch's defaults and a few alternatives.

Variants (``--variants``, comma-separated; each sets the environment of the child process):

* ``torch``: PyTorch's own behaviour (``PYRAMIDFLOW_THREAD_DEFAULTS=0``: the command line sets nothing);
* ``cli``: what the command line chooses by itself (no OpenMP variable set): passive when the machine
  is shared at start-up, PyTorch's behaviour when it is idle;
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE``; ``active``: ``OMP_WAIT_POLICY=ACTIVE``;
* ``spinN``: ``GOMP_SPINCOUNT=N`` (libgomp's spin before sleeping; its default is 300000);
* ``1thread`` / ``1thread-passive``: ``OMP_NUM_THREADS=1`` (and passive).

``NAME@DIR`` runs the variant with the code of another checkout DIR (e.g. the code before a change:
``git archive COMMIT | tar -x -C DIR``), so before and after alternate in the same rounds.

``--busy N`` runs N competing processes for the duration of each run (``--busy-kind spin``: a pure
Python loop each; ``matmul``: a torch matmul loop each with PyTorch's default threads, like another
training run), stopped when the run ends (and after ``--busy-limit`` seconds at most).

    python bench/bench_threads.py                                  # idle: every variant, 3 rounds
    python bench/bench_threads.py --busy 2 --variants torch,cli    # kept busy by 2 spinning processes
    python bench/bench_threads.py --variants torch@/tmp/before,cli  # today's code and defaults vs these
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OMP_KEYS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS", "PYRAMIDFLOW_THREAD_DEFAULTS")
FIXED = {
    "torch": {"PYRAMIDFLOW_THREAD_DEFAULTS": "0"},
    "cli": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "1thread": {"OMP_NUM_THREADS": "1", "PYRAMIDFLOW_THREAD_DEFAULTS": "0"},
    "1thread-passive": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
}
BUSY = {
    "spin": "import time\nend = time.time() + {limit}\nwhile time.time() < end:\n    pass\n",
    "matmul": ("import time, torch\nend = time.time() + {limit}\na = torch.randn(512, 512)\n"
               "while time.time() < end:\n    a = torch.tanh(a @ a * 0.01)\n"),
}


def variant_env(name: str) -> dict[str, str]:
    name = name.split("@")[0]
    if name in FIXED:
        return FIXED[name]
    if name.startswith("spin") and name[4:].isdigit():
        return {"GOMP_SPINCOUNT": name[4:]}
    raise SystemExit(f"unknown variant {name!r}: valid are {', '.join(FIXED)}, spinN")


def run_once(name: str, command: list[str], busy: int, busy_kind: str, busy_limit: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
    env.update(variant_env(name))
    code = Path(name.split("@")[1]) if "@" in name else REPO
    env["PYTHONPATH"] = str(code) + os.pathsep + env.get("PYTHONPATH", "")
    clean = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}  # competitors: the defaults
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY[busy_kind].format(limit=busy_limit)], env=clean)
            for _ in range(busy)]
    try:
        if hogs:
            time.sleep(1.0)  # let them start spinning
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run([*command, "--out", out], env=env, capture_output=True, text=True, cwd=code)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            metrics = json.loads((Path(out) / "metrics.json").read_text())
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return dict(variant=name, wall_s=wall, sample_s=metrics["sample_seconds"], load=load0,
                accuracy_all=metrics["accuracy"]["all"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="torch,cli,passive,spin10000,1thread")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the variants alternate within a round")
    ap.add_argument("--busy", type=int, default=0, help="competing processes during each run")
    ap.add_argument("--busy-kind", choices=sorted(BUSY), default="spin")
    ap.add_argument("--busy-limit", type=float, default=600.0, help="seconds a competitor runs at most")
    ap.add_argument("--command", default=None,
                    help="command to time (gets --out DIR; default: python -m pyramidflow demo --quiet)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    command = args.command.split() if args.command else [sys.executable, "-m", "pyramidflow", "demo", "--quiet"]
    names = args.variants.split(",")
    for name in names:
        variant_env(name)
    runs = []
    for r in range(args.rounds):
        for name in names:
            runs.append(run_once(name, command, args.busy, args.busy_kind, args.busy_limit))
            print(f"round {r + 1} {name}: {runs[-1]['wall_s']:.1f} s (sampling {runs[-1]['sample_s']:.1f} s, "
                  f"load {runs[-1]['load']:.1f})", file=sys.stderr, flush=True)
    rows = []
    for name in names:
        mine = [x for x in runs if x["variant"] == name]
        rows.append(dict(variant=name, env=variant_env(name), wall_s=statistics.median(x["wall_s"] for x in mine),
                         sample_s=statistics.median(x["sample_s"] for x in mine),
                         wall_min_s=min(x["wall_s"] for x in mine), runs=len(mine),
                         accuracy_all=mine[0]["accuracy_all"]))
    result = dict(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                  busy=f"{args.busy} x {args.busy_kind}" if args.busy else "none", rows=rows, runs=runs)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    base = rows[0]["wall_s"]
    print(f"{result['machine']}; competing processes started by this script: {result['busy']}; "
          f"{args.rounds} rounds, medians")
    print(f"| variant | environment | whole command s | sampling s | vs {rows[0]['variant']} |")
    print("|---|---|---|---|---|")
    for r in rows:
        env = " ".join(f"{k}={v}" for k, v in r["env"].items()) or "(none)"
        print(f"| {r['variant']} | {env} | {r['wall_s']:.1f} | {r['sample_s']:.1f} | {base / r['wall_s']:.2f}x |")


if __name__ == "__main__":
    main()
