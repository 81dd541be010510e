"""Train a VAE preset on procedural moving shapes generated here (a stand-in for the shapes dataset).

Used for the VAE quality numbers in docs/BENCHMARKS.md while ``pyramidflow.data.shapes`` was not
yet available: 1-2 anti-aliased discs or squares of random colour moving in straight lines over a
random dark background; clip i is a pure function of (i + offset).

    python bench/vae_shapes_standin.py --config configs/vae-shapes-tiny.yaml --out outputs/vae-standin
    python bench/vae_shapes_standin.py ... --quick          # 20 steps, smoke run
"""

from __future__ import annotations

import argparse
import json

import torch


class StandinShapes(torch.utils.data.Dataset):
    def __init__(self, n: int, frames: int = 9, size: int = 32, offset: int = 0) -> None:
        self.n, self.frames, self.size, self.offset = n, frames, size, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:  # (T, 3, H, W) in [0, 1]
        g = torch.Generator().manual_seed(i + self.offset)
        s = self.size
        yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
        background = torch.rand(3, generator=g) * 0.5
        clip = background.view(1, 3, 1, 1).repeat(self.frames, 1, s, s)
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            color = torch.rand(3, generator=g)
            r = 4 + 6 * torch.rand(1, generator=g).item()
            cy, cx = (torch.rand(2, generator=g) * (s - 2 * r) + r).tolist()
            vy, vx = ((torch.rand(2, generator=g) - 0.5) * 3).tolist()
            square = bool(torch.randint(0, 2, (1,), generator=g))
            for t in range(self.frames):
                py, px = cy + vy * t, cx + vx * t
                if square:
                    d = torch.maximum((yy - py).abs(), (xx - px).abs()) - r
                else:
                    d = ((yy - py) ** 2 + (xx - px) ** 2).sqrt() - r
                a = (0.5 - d).clamp(0, 1)  # anti-aliased coverage
                clip[t] = clip[t] * (1 - a) + color.view(3, 1, 1) * a
        return clip


def main() -> None:
    from pyramidflow.config import load_config
    from pyramidflow.training.vae_config import VAETrainConfig
    from pyramidflow.training.vae_trainer import train_vae

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vae-shapes-tiny.yaml")
    parser.add_argument("--out", default="outputs/vae-standin")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    overrides = [f"output_dir={args.out}", *args.overrides]
    if args.quick:
        overrides += ["max_steps=20", "val_every=10", "checkpoint_every=20"]
    cfg = load_config(VAETrainConfig, args.config, overrides)
    d = cfg.data
    train = StandinShapes(d.num_train, d.frames, d.height, d.seed)  # square frames: height == width
    val = StandinShapes(d.num_val, d.frames, d.height, d.seed + 10**6)
    print(json.dumps(train_vae(cfg, train, val, show_progress=False), indent=1))


if __name__ == "__main__":
    main()
