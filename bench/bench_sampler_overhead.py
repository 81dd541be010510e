"""Benchmark: what the pyramid machinery of ``sample`` costs beside the network (Algorithm 1).

Three timings over the same schedule and latent:
* ``sample`` with a free velocity function (returns a constant tensor): grids, Euler updates,
  the renoising jumps and all bookkeeping -- everything but the network.
* a bare loop doing only the Euler updates at the same shapes: the irreducible state arithmetic.
* one forward pass of a small diffusers ``WanTransformer3DModel`` at each stage's token count,
  to express the machinery's time as a share of a real step.

    python bench/bench_sampler_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from pyramidflow.pyramid import HaarTransform, PyramidSchedule, sample


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    shape = (1, 16, 9, 48, 80)  # a 384p-sized latent: 9 latent frames of 48 x 80 (2x2 patches)
    steps = (10, 10, 10)
    if args.quick:
        shape, steps = (1, 16, 3, 16, 16), (3, 3, 3)
    schedule, transform = PyramidSchedule(3), HaarTransform()
    shapes = [transform.shape_at(shape, schedule.levels(i)) for i in range(3)]
    consts = {s: torch.full(s, 0.01) for s in shapes}

    def free(x, sigma, stage):
        return consts[tuple(x.shape)]

    gen = torch.Generator().manual_seed(0)
    t_sample = best_of(lambda: sample(free, schedule, transform, shape, steps, gen), 5)

    def bare():
        for s, n in zip(shapes, steps, strict=True):
            x = torch.randn(s, generator=gen)
            for _ in range(n):
                x = x + (-0.01) * consts[s]

    t_bare = best_of(bare, 5)
    n_steps = sum(steps)

    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, rope_max_seq_len=256,
    ).eval()
    text = torch.randn(1, 16, 64)
    t_model = 0.0
    with torch.no_grad():
        for s, n in zip(shapes, steps, strict=True):
            x = torch.randn(s)
            t_model += n * best_of(lambda x=x: model(x, torch.tensor([500.0]), text), 2)
    overhead = t_sample - t_bare
    tokens = [s[2] * s[3] * s[4] // 4 for s in shapes]
    print(f"sampler overhead: latent {'x'.join(map(str, shape[1:]))}, steps {steps}, tokens per stage {tokens}")
    print(f"sample() with a free velocity:   {1e3 * t_sample:8.2f} ms total, {1e3 * t_sample / n_steps:6.3f} ms/step")
    print(f"bare Euler updates only:         {1e3 * t_bare:8.2f} ms total, {1e3 * t_bare / n_steps:6.3f} ms/step")
    print(f"pyramid machinery (difference):  {1e3 * overhead:8.2f} ms total, {1e3 * overhead / n_steps:6.3f} ms/step")
    print(f"small Wan transformer (4x128):   {1e3 * t_model:8.1f} ms total, {1e3 * t_model / n_steps:6.1f} ms/step")
    print(f"share of a step spent in sample() outside the network: {100 * t_sample / (t_sample + t_model):.2f}%")


if __name__ == "__main__":
    main()
