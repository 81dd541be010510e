"""``pyramidflow cache-latents``: encode a video dataset once into a latent cache."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache-latents",
        help="encode a manifest of videos (or built-in shapes clips) into safetensors latent shards",
        description="Encode every clip of a manifest (or --shapes N procedural clips) with a VAE (this "
        "project's or a diffusers AutoencoderKLWan folder) into checksummed safetensors shards plus "
        "index.json. Unreadable files are left out (one warning each), never replaced by another clip. "
        "Re-running skips finished shards; run several processes with --num-workers N --worker-id i.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="JSONL/CSV manifest of videos and captions")
    source.add_argument("--shapes", type=int, metavar="N", help="N clips of the built-in shapes dataset "
                        "instead (exact pixels, no video files; --frames/--height/--width set their size)")
    p.add_argument("--bounce", action="store_true", help="--shapes: shapes bounce off the walls")
    p.add_argument("--travel-frames", type=int, default=None, help="--shapes: frames in which a clip "
                   "covers its speed's share of the frame (default: the clip)")
    p.add_argument("--seed", type=int, default=0, help="--shapes: the dataset's seed")
    p.add_argument("--vae", required=True, help="VAE folder: train-vae's OUT/vae or a Wan VAE")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (1 + k*temporal compression)")
    p.add_argument("--height", type=int, default=None, help="frame height (x spatial compression)")
    p.add_argument("--width", type=int, default=None, help="frame width")
    p.add_argument("--fps", type=float, default=None, help="resample clips to this frame rate (default: "
                   "each file's own)")
    p.add_argument("--stride", type=int, default=None, help="several clips per file, this many frames apart "
                   "(default: one clip from the start of each file)")
    p.add_argument("--shard-size", type=int, default=64, help="clips per shard (default 64)")
    p.add_argument("--num-workers", type=int, default=1, help="processes sharing the work")
    p.add_argument("--worker-id", type=int, default=0, help="this process's id, 0..num-workers-1")
    p.add_argument("--chunk-latents", type=int, default=None, help="encode this many latents at a time")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--text-encoder", default=None, help="text encoder folder (embeddings stored too)")
    p.add_argument("--pyramid-levels", type=int, default=0, help="also store the definition-2 clean targets "
                   "of a pyramid this many levels deep: the video lowered in pixel space, then encoded "
                   "(docs/maths.md section 6; 2 for three stages)")
    p.add_argument("--pyramid", choices=("causal", "spatiotemporal", "spatial"), default="causal",
                   help="how a level lowers the video: causal first frame (Wan, default), 2x2x2, or 2x2")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.commands._parse import parse_device
    from pyramidflow.data.sources import clip_dataset
    from pyramidflow.models.vae import load_vae
    from pyramidflow.pyramid import HaarTransform
    from pyramidflow.training.vae.cache import build_latent_cache
    from pyramidflow.training.vae.data import manifest_clips, text_encode_fn

    dev = parse_device(args.device)
    vae = load_vae(args.vae).to(dev)
    frames, height, width = args.frames, args.height, args.width
    if frames is not None:
        vae.check_frames(frames)
    if height is not None and width is not None:
        vae.check_size(height, width)
    if args.shapes is not None:
        if args.shapes < 1 or None in (frames, height, width):
            raise ValueError("--shapes N needs N >= 1 and --frames, --height and --width")
        dataset = clip_dataset("shapes", frames=frames, height=height, width=width, length=args.shapes,
                               seed=args.seed, fps=args.fps or 8.0, bounce=args.bounce,
                               travel_frames=args.travel_frames)
        origin = {"shapes": args.shapes, "seed": args.seed, "bounce": args.bounce,
                  "travel_frames": args.travel_frames}
    else:
        dataset = manifest_clips(args.manifest, frames=frames, height=height, width=width, fps=args.fps,
                                 stride=args.stride)
        origin = {"manifest": str(args.manifest)}
    text = text_encode_fn(args.text_encoder, dev) if args.text_encoder else None
    extra = {**origin, "frames": frames, "height": height, "width": width, "fps": args.fps,
             "stride": args.stride}
    if args.pyramid_levels < 0:
        raise ValueError(f"--pyramid-levels must be >= 0, got {args.pyramid_levels}")
    transform = HaarTransform(temporal=args.pyramid != "spatial", causal_first_frame=args.pyramid == "causal")
    result = build_latent_cache(
        dataset,
        vae,
        args.out,
        shard_size=args.shard_size,
        worker_id=args.worker_id,
        num_workers=args.num_workers,
        text_encoder=text,
        chunk_latents=args.chunk_latents,
        header_extra=extra,
        show_progress=not args.quiet,
        pyramid_levels=args.pyramid_levels,
        pyramid_transform=transform,
    )
    index, skips = result["index"], getattr(dataset, "skipped", None)
    bad = skips.count if skips is not None else len(result["unreadable"])  # files, found early or late
    left_out = f"; left out {bad} unreadable files (warnings above)" if bad else ""
    print(
        f"worker {args.worker_id}: wrote {len(result['written'])} shards, skipped {len(result['skipped'])} "
        f"complete ones{left_out}; cache has {len(index['shards'])}/{index['num_shards']} shards, "
        f"{index['num_items']} clips ({'complete' if index['complete'] else 'incomplete'}) in {args.out}"
    )
    return 0
