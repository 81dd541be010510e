"""Pyramid Flow end to end: training tokens and step time (temporal pyramid vs full sequence), and
sampling time (pyramidal vs single-stage, history cache on and off) beside the FLOP ratio.

    python bench/bench_pyramid_flow.py                 # all parts
    python bench/bench_pyramid_flow.py --parts tokens  # tokens,steps,sampling

Models are random-initialised (timings do not depend on the weights); sizes follow
configs/shapes-tiny.yaml unless stated.
"""

from __future__ import annotations

import argparse
import time

import torch

from pyramidflow.config import load_config, to_dict
from pyramidflow.flops import TransformerSpec, forward_flops, schedule_flops
from pyramidflow.pipelines import PipelineConfig, PyramidFlowPipeline
from pyramidflow.pyramid import HaarTransform
from pyramidflow.pyramid.temporal import max_training_tokens, tokens_per_level
from pyramidflow.training.build import build_components, make_trainer
from pyramidflow.training.config import TrainConfig

PRESET = "configs/shapes-tiny.yaml"


def paper_tokens() -> None:
    """The temporal pyramid's largest training sequence against the full sequence (Pyramid Flow:
    at most 15,360 against 119,040 tokens for 241 frames at 768p)."""
    print("\n## Tokens per training sample: 768p (96x160 latents, patch 2), 8x temporal VAE, 3 stages")
    print("formula: full = U * n_0;  autoregressive = max over (unit u, stage i) of")
    print("  n_{L_i} + sum over history units d = 1..u of n_{min(L_i + d - 1, K - 1)}")
    print("(n_l = tokens of one latent frame l levels down: 3840, 960, 240)\n")
    per_level = tokens_per_level((96, 160), (2, 2), 1, 3)
    print("| video frames | latent frames | full sequence | autoregressive (max) | ratio |")
    print("|---|---|---|---|---|")
    for frames in (1, 9, 17, 33, 65, 121, 241):
        units = 1 + (frames - 1) // 8
        full = units * per_level[0]
        ar = max_training_tokens(units, per_level)
        print(f"| {frames} | {units} | {full} | {ar} | {full / ar:.1f}x |")


def _trainer(mode: str, frames: int, batch: int, out: str):
    cfg = load_config(TrainConfig, PRESET, [
        f"temporal.mode={mode}", f"data.frames={frames}", f"loop.batch_size={batch}", f"output_dir={out}",
        "loop.progress=false", "loop.checkpoint_every=0", "loop.ema_decay=0", "data.num_clips=512"])
    parts = build_components(cfg)
    return make_trainer(cfg, parts)


def _measured_tokens(trainer, batch: int) -> tuple[float, int]:
    """Mean and max tokens per training sample over a batch of real draws (the packed sequences)."""
    from pyramidflow.training.packed_loss import draw_example
    from pyramidflow.training.trainer import example_generator

    method = trainer.method
    x0 = method.to_model_space(torch.stack([trainer.dataset[i]["video"] for i in range(batch)]))
    patch = method.transformer.config.patch_size
    counts = []
    for j, x in enumerate(x0.split(1)):
        ex = draw_example(x, method.schedule, method.transform, example_generator(0, 0, j), method.temporal,
                          patch[0])
        counts.append(sum(s.latent[0, 0].numel() // (patch[0] * patch[1] * patch[2]) for s in ex.segments))
    return sum(counts) / len(counts), max(counts)


def step_times(repeats: int) -> None:
    print("\n## Training step, autoregressive temporal pyramid vs full sequence (shapes-tiny, 32x32, batch 16)")
    print("| frames | mode | tokens/sample mean | max | s/step |")
    print("|---|---|---|---|---|")
    for frames in (4, 8, 16):
        for mode in ("full_sequence", "autoregressive"):
            tr = _trainer(mode, frames, 16, f"/tmp/bench_pf_{mode}_{frames}")
            mean, most = _measured_tokens(tr, 16)
            tr.train_step()  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                tr.train_step()
                times.append(time.perf_counter() - t0)
            times.sort()
            print(f"| {frames} | {mode} | {mean:.0f} | {most} | {times[len(times) // 2]:.3f} |")


def _pipe(stages: int, mode: str = "autoregressive") -> PyramidFlowPipeline:
    cfg = load_config(TrainConfig, PRESET, [f"pyramid.num_stages={stages}", f"temporal.mode={mode}",
                                            f"sampling.steps={[10] * stages}", "data.num_clips=64"])
    parts = build_components(cfg)
    config = PipelineConfig.from_train_dict(to_dict(cfg))
    return PyramidFlowPipeline(parts.model.eval(), parts.text_encoder.eval(), None, config)


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def sampling(repeats: int) -> None:
    prompts = ["a red circle moving left on a black background"] * 8
    print("\n## Sampling 8 clips (4 frames, 32x32), guidance 4 (two passes per step)")
    print("| model | mode | steps | s | TFLOPs (per clip, model) | time ratio | FLOP ratio |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for stages, steps in ((3, (10, 10, 10)), (1, (10,)), (1, (30,))):
        for mode in ("full_sequence", "autoregressive"):
            pipe = _pipe(stages, mode)
            sec = _time(lambda pipe=pipe, steps=steps: pipe(prompts, num_inference_steps=steps, progress=False),
                        repeats)
            spec = TransformerSpec.from_config(pipe.transformer.config, text_len=24)
            if mode == "full_sequence":
                flops = schedule_flops(spec, (4, 32, 32), steps, HaarTransform(), cfg=True)["total_tflops"]
            else:  # one frame per unit, with its compressed history
                flops = _ar_flops(spec, 4, steps)
            rows.append((stages, mode, steps, sec, flops))
    base = {m: (s, f) for st, m, steps, s, f in rows if st == 3}
    for stages, mode, steps, sec, flops in rows:
        b = base[mode]
        print(f"| {stages} stage(s) | {mode} | {'-'.join(map(str, steps))} | {sec:.2f} | {flops:.5f} | "
              f"{sec / b[0]:.2f} | {flops / b[1]:.2f} |")
    print("\n## History cache, autoregressive sampling (16 frames = 16 units, 10-10-10 steps)")
    pipe = _pipe(3)
    on = _time(lambda: pipe(prompts, num_frames=16, progress=False), max(1, repeats // 2))
    off = _time(lambda: pipe(prompts, num_frames=16, progress=False, use_cache=False), max(1, repeats // 2))
    print(f"| cache | s |\n|---|---|\n| on | {on:.2f} |\n| off | {off:.2f} |\n\nspeed-up {off / on:.2f}x")


def _ar_flops(spec: TransformerSpec, units: int, steps) -> float:
    """FLOPs (TFLOPs, with guidance) of autoregressive sampling: every step of unit u at stage i
    runs the current tokens against the compressed history (history counted in attention only
    when cached: its keys/values are computed once per stage)."""
    k = len(steps)
    per_level = tokens_per_level((32, 32), spec.patch_size[1:], 1, k)
    total = 0.0
    for u in range(units):
        for i, n_steps in enumerate(steps):
            from pyramidflow.pyramid.temporal import history_levels

            cur = per_level[k - 1 - i]
            hist = sum(per_level[lv] for lv in history_levels(u, i, k))
            attn_extra = 2 * 2 * cur * hist * spec.dim * spec.num_layers  # q·k and a·v over history keys
            once = forward_flops(spec, hist) if hist else 0.0  # the cache, once per stage
            total += 2 * (n_steps * (forward_flops(spec, cur) + attn_extra) + once)
    return total / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="tokens,steps,sampling")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    if "tokens" in parts:
        paper_tokens()
    if "steps" in parts:
        step_times(args.repeats)
    if "sampling" in parts:
        sampling(args.repeats)


if __name__ == "__main__":
    main()
