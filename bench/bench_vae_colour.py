"""Where a Wan VAE loses colour: a linear probe of the chroma of flat-colour clips at every stage.

Flat clips of random colours go through ``AutoencoderKLWan`` (encode, then decode the posterior
mean). At each named module the mean feature vector of the last frame is recorded (at
``encoder.conv_out``: posterior mean and log-variance channels together), and a least-squares
probe fitted on 64 colours predicts the chroma (each colour minus its grey level) of 32 others. R^2
near 1: the stage still carries colour linearly; near or below 0: it does not. Also prints the
reconstructed colour of a few flat clips.

    python bench/bench_vae_colour.py --vae runs/vae-wan-shapes/vae

On the toy Wan VAE trained on the built-in shapes (grey backgrounds) the probe falls from 0.99 to
0.08 at ``encoder.norm_out`` (docs/BENCHMARKS.md, "The toy Wan teacher's VAE").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pyramidflow.models.vae import load_vae

STAGES = ("encoder.conv_in", "encoder.mid_block", "encoder.norm_out", "encoder.conv_out",
          "decoder.conv_in", "decoder.mid_block", "decoder.norm_out")  # plus every down / up block


def flat_clip(colour: torch.Tensor, frames: int, size: int) -> torch.Tensor:
    """(3,) colour in [0, 1] -> (1, 3, frames, size, size) in [-1, 1]."""
    return colour.view(1, 3, 1, 1, 1).expand(1, 3, frames, size, size) * 2 - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae", required=True, help="folder of a diffusers AutoencoderKLWan")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    vae = load_vae(args.vae)
    modules = dict(vae.vae.named_modules())
    blocks = ("encoder.down_blocks.", "decoder.up_blocks.")
    names = [n for n in modules if n in STAGES or (n.startswith(blocks) and n.count(".") == 2)]
    feats: dict[str, torch.Tensor] = {}
    for name in names:
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: feats.__setitem__(name, out[0] if isinstance(out, tuple) else out))
    colours = torch.rand(96, 3, generator=torch.Generator().manual_seed(args.seed))
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for colour in colours:
        feats.clear()
        with torch.no_grad():
            vae.decode(vae.encode(flat_clip(colour, args.frames, args.size)))
        for name, out in feats.items():
            rows[name].append(out[0, :, -1].mean(dim=(-1, -2)).double().numpy())
    target = (colours - colours.mean(dim=1, keepdim=True)).double().numpy()
    print("| module | channels | chroma R^2 (held-out colours) |\n|---|---|---|")
    for name in names:
        x = np.concatenate([np.stack(rows[name]), np.ones((len(colours), 1))], axis=1)
        w, *_ = np.linalg.lstsq(x[:64], target[:64], rcond=None)
        err = x[64:] @ w - target[64:]
        r2 = 1 - (err**2).sum() / ((target[64:] - target[64:].mean(axis=0)) ** 2).sum()
        print(f"| {name} | {x.shape[1] - 1} | {r2:.3f} |")
    print("\nflat clips, input -> reconstruction (mean r, g, b):")
    for colour in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.5, 0.5, 0.5)):
        with torch.no_grad():
            out = vae.decode(vae.encode(flat_clip(torch.tensor(colour), args.frames, args.size)))
        print(colour, "->", tuple(round(v, 2) for v in ((out.clamp(-1, 1) + 1) / 2).mean(dim=(0, 2, 3, 4)).tolist()))


if __name__ == "__main__":
    main()
