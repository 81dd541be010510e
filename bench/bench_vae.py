"""VAE benchmarks: reconstruction quality, encode/decode speed, peak memory of whole vs chunked/tiled.

    python bench/bench_vae.py --vae outputs/vae-shapes-tiny/vae --shapes 16      # quality on shapes clips
    python bench/bench_vae.py --vae DIR --videos data/mp4s --frames 17 --size 128  # real videos
    python bench/bench_vae.py --memory                                           # whole vs chunked vs tiled
    python bench/bench_vae.py --vae DIR --memory-video clip.mp4 --frames 33 --height 272 --width 640
    python bench/bench_vae.py --quick                                            # memory table, small sizes
    python bench/bench_vae.py --vae DIR --judge 64 --frames 17 --travel-frames 8   # evaluator on recons

``--judge N``: N held-out bouncing shapes clips with their prompts, judged by the evaluator before
and after encode + decode: what a text-to-video model in this latent space can show at best.

Peak memory is the peak resident set size of a fresh process that decodes once, minus that process's
resident size just before decoding (so model weights and the input are excluded).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pyramidflow.models.vae import CausalVideoVAE, load_vae
from pyramidflow.training.vae.data import as_clip, to_model_range
from pyramidflow.training.vae.losses import psnr, ssim


def memory_model() -> CausalVideoVAE:
    """A random mid-sized causal VAE (8x8 spatial, x4 temporal) for the memory comparison."""
    torch.manual_seed(0)
    return CausalVideoVAE(
        latent_channels=16,
        block_out_channels=(32, 64, 128, 128),
        spatial_down=(True, True, True, False),
        temporal_down=(True, True, False, False),
        layers_per_block=1,
        decoder_layers_per_block=1,
        norm_groups=0,
    ).eval()


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _decode_once(spec, chunk, tile, queue):
    """Child process: decode once, report (peak extra MiB, output MiB, seconds, PSNR or None)."""
    torch.set_num_threads(2)
    if "file" in spec:  # latents of a real clip, the trained VAE that made them
        vae = load_vae(spec["vae"]).eval()
        z = load_file(spec["file"])["z"]  # the source frames are in another file, read later
    else:
        vae = memory_model()
        z = torch.randn(1, 16, spec["latent_frames"], spec["size"], spec["size"])
    base = _rss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        out = vae.decode(z, chunk_latents=chunk, tile_latent=tile, tile_overlap=spec.get("overlap", 4))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    out_mb = out.numel() * 4 / 2**20
    score = None
    if "file" in spec:  # after the peak was read, so the reference does not count
        ref = (load_file(spec["source"])["x"] + 1) / 2
        score = float(psnr(((out.float() + 1) / 2).clamp(0, 1), ref).mean())
    queue.put((peak - base, out_mb, seconds, score))


def measure_decode(spec, chunk=None, tile=None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_decode_once, args=(spec, chunk, tile, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def memory_table(quick: bool) -> None:
    lengths = (3, 9) if quick else (3, 9, 17)
    size = 16 if quick else 32  # latent pixels: x8 -> 128 or 256 px frames
    print(f"\n## Peak decode memory (random 4-level VAE, 16 latent ch, {size * 8}x{size * 8} frames)")
    print("| latent frames | video frames | mode | peak extra MiB | output MiB | seconds |")
    print("|---|---|---|---|---|---|")
    for t in lengths:
        frames = 1 + (t - 1) * 4
        for name, chunk, tile in (("whole", None, None), ("chunked 1", 1, None), ("chunked 1 + tiled", 1, size // 2)):
            peak, out_mb, sec, _ = measure_decode({"latent_frames": t, "size": size}, chunk, tile)
            print(f"| {t} | {frames} | {name} | {peak:.0f} | {out_mb:.0f} | {sec:.2f} |")


def video_tensor(path: str, frames: int, height: int, width: int) -> torch.Tensor:
    """The first ``frames`` frames of a video, scaled to cover ``height`` x ``width`` and centre-cropped
    (as the training datasets read it): (1, 3, F, H, W) in [-1, 1]."""
    from pyramidflow.data.video import Entry, VideoClipDataset

    clip = VideoClipDataset([Entry(path, "")], frames, height=height, width=width)[0]
    return to_model_range([as_clip(clip)])


def video_memory_table(vae_dir: str, path: str, frames: int, height: int, width: int, tile: int) -> None:
    """Whole vs chunked vs tiled decoding of one real clip encoded by a trained VAE."""
    vae = load_vae(vae_dir).eval()
    x = video_tensor(path, frames, height, width)
    with torch.no_grad():
        start = time.perf_counter()
        z = vae.encode(x, chunk_latents=1)
        enc = time.perf_counter() - start
    print(f"\n## Decoding one real clip: {path}, {frames} frames at {width}x{height}, latents {tuple(z.shape)}")
    print(f"chunked encode: {enc:.2f} s ({frames / enc:.1f} frames/s)")
    print("| mode | peak extra MiB | output MiB | seconds | frames/s | PSNR dB vs source |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"vae": vae_dir, "file": f"{tmp}/z.safetensors", "source": f"{tmp}/x.safetensors",
                "overlap": tile // 4}
        save_file({"z": z.contiguous()}, spec["file"])
        save_file({"x": x.contiguous()}, spec["source"])
        for name, chunk, t in (("whole", None, None), ("chunked 1", 1, None), ("chunked 1 + tiled", 1, tile)):
            peak, out_mb, sec, score = measure_decode(spec, chunk, t)
            print(f"| {name} | {peak:.0f} | {out_mb:.0f} | {sec:.2f} | {frames / sec:.1f} | {score:.2f} |")


def quality(vae, clips, label: str, batch: int = 4) -> None:
    scores_p, scores_s, enc_s, dec_s, frames = [], [], 0.0, 0.0, 0
    for start in range(0, len(clips), batch):
        x = to_model_range(clips[start : start + batch])
        with torch.no_grad():
            t0 = time.perf_counter()
            z = vae.encode(x)
            t1 = time.perf_counter()
            y = vae.decode(z)
            t2 = time.perf_counter()
        enc_s, dec_s, frames = enc_s + t1 - t0, dec_s + t2 - t1, frames + x.shape[0] * x.shape[2]
        rec, ref = ((y.float() + 1) / 2).clamp(0, 1), (x + 1) / 2
        scores_p.append(psnr(rec, ref))
        scores_s.append(ssim(rec, ref))
    p, s = torch.cat(scores_p), torch.cat(scores_s)
    shape = tuple(clips[0].shape)
    print(f"\n## Reconstruction: {label} ({len(clips)} clips of {shape[0]}x{shape[2]}x{shape[3]})")
    print("| PSNR dB (mean) | PSNR min | SSIM (mean) | encode frames/s | decode frames/s |")
    print("|---|---|---|---|---|")
    print(f"| {p.mean():.2f} | {p.min():.2f} | {s.mean():.4f} | {frames / enc_s:.1f} | {frames / dec_s:.1f} |")


def shapes_clips(n: int, frames: int, size: int):
    """Held-out built-in shapes clips (the seed train-vae validates with)."""
    from pyramidflow.training.vae.data import shapes_dataset

    data = shapes_dataset(n, frames, size, size, seed=10**6)
    return [as_clip(data[i]) for i in range(n)]


def judge(vae, n: int, frames: int, size: int, travel_frames: int) -> None:
    """Evaluator accuracies of held-out shapes clips and of their reconstructions (posterior mean)."""
    from pyramidflow.data.shapes import ShapesDataset
    from pyramidflow.eval.evaluator import accuracies, evaluate_video

    data = ShapesDataset(height=size, width=size, num_frames=frames, seed=10**6, length=n, split="val",
                         bounce=True, travel_frames=travel_frames)
    source, recon = [], []
    for i in range(n):
        item = data[i]
        x = to_model_range([as_clip(item)])
        with torch.no_grad():
            y = ((vae.decode(vae.encode(x)).float() + 1) / 2).clamp(0, 1)[0].transpose(0, 1)  # (T, 3, H, W)
        source.append(evaluate_video(item["video"], item["text"], travel_frames))
        recon.append(evaluate_video(y.numpy(), item["text"], travel_frames))
    keys = ("color", "shape", "direction", "speed", "background", "intact", "all")
    print(f"\n## Evaluator on {n} held-out clips of {frames}x{size}x{size} (travel_frames {travel_frames})")
    print("| clips | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, results in (("source", source), ("reconstructed", recon)):
        acc = accuracies(results)
        print(f"| {label} | " + " | ".join("-" if acc.get(k) is None else f"{acc[k]:.2f}" for k in keys) + " |")
    # where the motion goes wrong: the object's centroid, reconstructed against source, per frame
    error = [np.linalg.norm(np.asarray(r["positions"], float) - np.asarray(s["positions"], float), axis=1)
             for s, r in zip(source, recon, strict=True)]
    print("\nMean centroid error (px) of the reconstructions by frame: "
          + " / ".join(f"{e:.2f}" for e in np.nanmean(np.stack(error), 0)))


def video_clips(folder: str, frames: int, height: int, width: int, limit: int, stride: int | None):
    from pyramidflow.training.vae.data import folder_clips

    data = folder_clips(folder, frames=frames, height=height, width=width, stride=stride)
    return [as_clip(data[i]) for i in range(min(limit, len(data)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default=None, help="trained VAE directory (ours or a Wan VAE folder)")
    parser.add_argument("--shapes", type=int, default=0, help="number of shapes validation clips")
    parser.add_argument("--judge", type=int, default=0, help="number of shapes clips to judge (they bounce when --travel-frames < frames - 1)")
    parser.add_argument("--travel-frames", type=int, default=8, help="the clips' motion scale (--judge)")
    parser.add_argument("--videos", default=None, help="folder of real videos (mp4)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--size", type=int, default=32, help="square frame size")
    parser.add_argument("--height", type=int, default=None, help="frame height (overrides --size)")
    parser.add_argument("--width", type=int, default=None, help="frame width (overrides --size)")
    parser.add_argument("--memory-video", default=None, help="one video: whole vs chunked vs tiled decode with --vae")
    parser.add_argument("--tile", type=int, default=16, help="latent tile size for --memory-video")
    parser.add_argument("--limit", type=int, default=16, help="at most this many clips from --videos")
    parser.add_argument("--stride", type=int, default=None, help="a clip every N frames (default: one per file)")
    parser.add_argument("--memory", action="store_true", help="whole vs chunked vs tiled peak memory")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.quick and not (args.memory or args.vae):
        args.memory = True
    vae = load_vae(args.vae) if args.vae else None
    if vae is not None and args.shapes:
        quality(vae, shapes_clips(args.shapes, args.frames, args.size), "shapes validation")
    if vae is not None and args.judge:
        judge(vae, args.judge, args.frames, args.size, args.travel_frames)
    height, width = args.height or args.size, args.width or args.size
    if vae is not None and args.videos:
        clips = video_clips(args.videos, args.frames, height, width, args.limit, args.stride)
        quality(vae, clips, f"videos in {args.videos}")
    if args.memory_video:
        if not args.vae:
            parser.error("--memory-video needs --vae")
        video_memory_table(args.vae, args.memory_video, args.frames, height, width, args.tile)
    if args.memory:
        memory_table(args.quick)


if __name__ == "__main__":
    main()
