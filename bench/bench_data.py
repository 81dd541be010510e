"""Data throughput: clips per second of the shapes dataset, of decoding real mp4 files, and of the
evaluator, through a DataLoader with 0 (main process), 1 and 2 workers.

    python bench/bench_data.py            # full run (a few minutes on 2 cores)
    python bench/bench_data.py --quick    # smaller counts, same table

The mp4 files are written first (H.264, 320x240 at 24 fps, 2 s, moving shapes upscaled), then
decoded as 16-frame clips resampled to 8 fps, resized to 64 on the shorter side and centre-cropped.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.data.video import VideoFolderDataset
from pyramidflow.eval import accuracies, evaluate_video, frechet_video_distance
from pyramidflow.io import write_video


def loader_rate(dataset, workers: int, batch: int, clips: int) -> float:
    """Clips per second drawing ``clips`` items through a DataLoader (worker start-up included)."""
    n = min(clips, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(b["video"]) for b in loader)
    return count / (time.perf_counter() - start)


def corrupt(video: torch.Tensor, noise: float, blur: float, seed: int) -> torch.Tensor:
    import numpy as np
    from scipy import ndimage

    x = ndimage.gaussian_filter(video.numpy(), (0, 0, blur, blur)) if blur else video.numpy()
    x = x + noise * np.random.default_rng(seed).standard_normal(x.shape)
    return torch.from_numpy(np.clip(x, 0, 1).astype(np.float32))


def robustness(n: int) -> None:
    """Evaluator accuracies and Fréchet distance to clean clips under noise / blur (32x32, 8 frames)."""
    real = [ShapesDataset(32, 8, seed=21)[i] for i in range(n)]
    ref = [ShapesDataset(32, 8, seed=22)[i]["video"] for i in range(n)]
    print(f"\n| corruption ({n} clips 8x32x32) | color | shape | direction | speed | background | intact | all "
          "| FD to clean |")
    print("|---|---|---|---|---|---|---|---|---|")
    for noise, blur in ((0, 0), (0.05, 0), (0.1, 0), (0.2, 0), (0.3, 0), (0, 1), (0, 1.5), (0, 2), (0.1, 1)):
        vids = [corrupt(it["video"], noise, blur, i) for i, it in enumerate(real)]
        acc = accuracies(evaluate_video(v, it["text"]) for v, it in zip(vids, real, strict=True))
        cells = " | ".join(f"{acc[k]:.2f}" for k in ("color", "shape", "direction", "speed", "background", "intact",
                                                     "all"))
        fd = frechet_video_distance(ref, vids)
        print(f"| noise {noise}, blur {blur} px | {cells} | {fd:.2f} |")


def make_mp4s(folder: Path, num: int) -> None:
    ds = ShapesDataset(height=60, width=80, num_frames=48, length=num, seed=3)
    for i in range(num):
        item = ds[i]
        video = torch.nn.functional.interpolate(item["video"], size=(240, 320), mode="bilinear")
        write_video(folder / f"{i:04d}.mp4", video, fps=24)
        (folder / f"{i:04d}.txt").write_text(item["text"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer clips (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # per process; workers add processes
    scale = 4 if args.quick else 1
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; torch {torch.__version__}")
    print("\n| data | clip | workers | clips/s |")
    print("|---|---|---|---|")
    for size, frames, n in ((32, 4, 4000), (64, 16, 1000), (128, 16, 300)):
        ds = ShapesDataset(size, frames, length=n)
        for workers in (0, 1, 2):
            rate = loader_rate(ds, workers, 16, n // scale)
            print(f"| shapes | {frames}x{size}x{size} | {workers} | {rate:.0f} |")
    with tempfile.TemporaryDirectory() as tmp:
        num = 96 // scale
        start = time.perf_counter()
        make_mp4s(Path(tmp), num)
        write_s = time.perf_counter() - start
        ds = VideoFolderDataset(tmp, frames=16, size=64, fps=8)
        for i in range(len(ds)):  # warm-up: file cache and codec start-up are not timed
            ds[i]
        for workers in (0, 1, 2):
            rate = loader_rate(ds, workers, 8, num)
            print(f"| mp4 320x240 24 fps -> 8 fps, 64x64 crop | 16x64x64 | {workers} | {rate:.1f} |")
        print(f"| (writing those mp4 files, H.264) | 48x240x320 | 0 | {num / write_s:.1f} |")
    print("\n| evaluator | clip | clips/s |")
    print("|---|---|---|")
    for size, frames, n in ((32, 4, 400), (64, 16, 100)):
        items = [ShapesDataset(size, frames)[i] for i in range(n // scale)]
        start = time.perf_counter()
        for it in items:
            evaluate_video(it["video"], it["text"])
        print(f"| evaluate_video | {frames}x{size}x{size} | {len(items) / (time.perf_counter() - start):.0f} |")
    robustness(200 // scale)


if __name__ == "__main__":
    main()
