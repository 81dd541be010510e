"""How fast a VAE architecture can fit a handful of shapes clips: Adam on one fixed batch.

A diagnostic for the toy Wan teacher's VAE: can the architecture reconstruct the shapes at all, and
after how many steps? Compares diffusers' ``AutoencoderKLWan`` (the teacher's VAE; trained through
its unclamped decoder) with this project's causal VAE (residual blocks, or plain blocks). Prints
the loss and the PSNR of the batch every ``--every`` steps.

    python bench/bench_vae_overfit.py --kind wan --steps 150 [--lr 1e-3] [--loss l1|mse] [--clips 4]
        [--object-scale 0.34] [--image sheet.png] [--chroma 5]

``--flat``: instead, a fresh batch of 8 flat random-colour clips (5x16x16) every step, and the chroma
error measured on 16 held-out colours: can the architecture learn colour at all?
"""

from __future__ import annotations

import argparse
import time

import torch

from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.models.vae import CausalVideoVAE, frames_to_model
from pyramidflow.models.vae.wan import WanVAE
from pyramidflow.training.vae.losses import chroma, psnr, reconstruction_terms


def build(kind: str):
    if kind in ("wan", "wan-residual"):
        from diffusers import AutoencoderKLWan

        vae = WanVAE(AutoencoderKLWan(base_dim=16, z_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1,
                                      temperal_downsample=[True, True], latents_mean=[0.0] * 8,
                                      latents_std=[1.0] * 8, is_residual=kind == "wan-residual"))
        return vae, vae.decode_unclamped
    block = "plain" if kind == "plain" else "res"
    vae = CausalVideoVAE(latent_channels=8, block_out_channels=(16, 32, 32), spatial_down=(True, True, False),
                         temporal_down=(True, True, False), layers_per_block=1, decoder_layers_per_block=1,
                         norm_groups=8, block_type=block)
    return vae, vae.decode_raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("wan", "wan-residual", "res", "plain"), default="wan",
                   help="wan-residual: AutoencoderKLWan with is_residual (shortcuts around re-sampling)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=("l1", "mse"), default="l1")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--object-scale", type=float, default=0.34, help="shape size over the frame side")
    p.add_argument("--image", default=None, help="write the batch (top) and its reconstruction here at the end")
    p.add_argument("--chroma", type=float, default=0.0, help="weight of the chroma term (docs/maths.md (18.4))")
    p.add_argument("--flat", action="store_true", help="flat random colours, held-out chroma error")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.flat:
        return flat_colours(args)
    data = ShapesDataset(32, 17, length=args.clips, bounce=True, travel_frames=8, object_scale=args.object_scale)
    x = frames_to_model(torch.stack([data[i]["video"] for i in range(args.clips)]))
    vae, decode = build(args.kind)
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps + 1):
        recon = decode(vae.encode_moments(x)[0])
        loss = objective(recon, x, args)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            db = psnr((recon.detach().clamp(-1, 1) + 1) / 2, (x + 1) / 2).mean()
            print(f"step {step:5d}  loss {loss.item():.4f}  psnr {db:.2f} dB  chroma error "
                  f"{chroma_error(recon.detach(), x):.3f}  {time.perf_counter() - start:.0f} s", flush=True)
    if args.image:
        write_sheet(args.image, x, recon.detach())


def objective(recon: torch.Tensor, x: torch.Tensor, args) -> torch.Tensor:
    """L1 or MSE, plus ``--chroma`` times the chroma term."""
    l1, mse = (1.0, 0.0) if args.loss == "l1" else (0.0, 1.0)
    return sum(reconstruction_terms(recon, x, l1, mse, 0.0, args.chroma).values())


def flat_clips(colours: torch.Tensor) -> torch.Tensor:
    """(N, 3) colours in [0, 1] -> (N, 3, 5, 16, 16) flat clips in [-1, 1]."""
    return colours.view(-1, 3, 1, 1, 1).expand(-1, 3, 5, 16, 16) * 2 - 1


def flat_colours(args) -> None:
    vae, decode = build(args.kind)
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    draws = torch.Generator().manual_seed(0)
    held_out = flat_clips(torch.rand(16, 3, generator=torch.Generator().manual_seed(99)))
    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                err = chroma_error(decode(vae.encode_moments(held_out)[0]), held_out)
            print(f"step {step:5d}  held-out chroma error {err:.3f}  {time.perf_counter() - start:.0f} s", flush=True)
        x = flat_clips(torch.rand(8, 3, generator=draws))
        loss = objective(decode(vae.encode_moments(x)[0]), x, args)
        opt.zero_grad()
        loss.backward()
        opt.step()


def chroma_error(recon: torch.Tensor, x: torch.Tensor) -> float:
    """Mean |error| of the colour away from grey ((r, g, b) minus its mean), on [-1, 1] pixels.

    A reconstruction that keeps brightness but turns every object grey has a low L1 on the background
    and a chroma error near the objects' own saturation.
    """
    return (chroma(recon.clamp(-1, 1)) - chroma(x)).abs().mean().item()


def write_sheet(path: str, x: torch.Tensor, recon: torch.Tensor) -> None:
    """Frames 0, middle, last of each clip: the input in the top row, the reconstruction below."""
    from PIL import Image

    frames = (0, x.shape[2] // 2, x.shape[2] - 1)
    pairs = zip(x, recon.clamp(-1, 1), strict=True)
    rows = [torch.cat([v[:, f] for f in frames], dim=2) for clip in pairs for v in clip]
    grid = ((torch.cat(rows, dim=1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()
