"""``pyramidflow sample``: generate a video (or an image) from a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyramidflow.commands._parse import add_dtype_argument


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="generate a video or image from a prompt (text-to-video, text-to-image, image-to-video)",
        description="Generate with a trained pyramidal flow model. --checkpoint takes a saved pipeline "
        "(e.g. checkpoints/shapes-tiny), a training checkpoint (OUT/checkpoint-STEP, EMA weights) or a "
        "training output folder (its newest checkpoint). --frames 1 gives an image; --image makes the "
        "given picture the first frame. Unset options use the model's saved defaults.",
    )
    p.add_argument("--checkpoint", required=True, help="pipeline, checkpoint or training output folder")
    p.add_argument("--prompt", required=True, help="text prompt")
    p.add_argument("--image", default=None, help="first frame (image-to-video), resized to the model's size")
    p.add_argument("--frames", type=int, default=None, help="video frames (1: text-to-image)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", default=None, help="Euler steps per stage, e.g. 20,20,20")
    p.add_argument("--first-steps", default=None, help="autoregressive: steps of the first unit")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale of the first frame/unit")
    p.add_argument("--video-guidance", type=float, default=None, help="guidance of later frames/units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute history at every step")
    p.add_argument("--step-rule", choices=("euler", "x0_renoise"), default=None,
                   help="how a step moves within a stage (default: the model's own; x0_renoise: few-step "
                   "models)")
    p.add_argument("--raw", action="store_true", help="use the raw weights of a checkpoint, not the EMA")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    add_dtype_argument(p)
    p.add_argument("--attention", choices=("auto", "sdpa", "flex"), default=None,
                   help="attention kernels (default: the model's, normally auto = PyTorch SDPA, which picks "
                   "flash/cuDNN kernels on a GPU, and FlexAttention for irregular masks on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer's blocks (static "
                   "shapes: the first step of each stage compiles; pays off over many steps)")
    p.add_argument("--offload", action="store_true", help="keep the text encoder and VAE on the CPU, on the "
                   "GPU only while they run (saves GPU memory; nothing to do with --device cpu)")
    p.add_argument("--vae-tiling", type=int, nargs="?", const=32, default=None, metavar="LATENT_PIXELS",
                   help="decode large frames in tiles of this many latent pixels (default 32), seams blended")
    p.add_argument("--parallel", choices=("none", "ulysses", "cfg"), default="none",
                   help="several processes for one video, under torchrun --nproc_per_node N: ulysses shards "
                   "the token sequence (N must divide the attention heads), cfg splits the guided batch "
                   "(conditional and unconditional halves on two processes). Only the first process writes.")
    p.add_argument("--out", required=True, help="output file: .mp4, .gif, or .png/.jpg for one frame")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.commands._parse import int_list, parse_device

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif", ".png", ".jpg", ".jpeg"):
        raise ValueError(f"--out {out.name}: valid suffixes are .mp4, .gif, .png, .jpg")
    steps = int_list(args.steps, "steps") if args.steps is not None else None
    first = int_list(args.first_steps, "first-steps") if args.first_steps is not None else None
    device = parse_device(args.device)
    if args.parallel == "none":
        return _generate(args, out, steps, first, device)
    from pyramidflow.pipelines.parallel import close_processes, init_processes

    try:
        return _generate(args, out, steps, first, init_processes(device))
    finally:
        close_processes()


def _generate(args, out: Path, steps, first, device) -> int:
    from pyramidflow.commands._parse import torch_dtype
    from pyramidflow.io import write_video
    from pyramidflow.io.run_dir import is_main_process
    from pyramidflow.pipelines import PyramidFlowPipeline

    main = is_main_process()
    load_to = "cpu" if args.offload else device  # with --offload only the transformer moves to the device
    pipe = PyramidFlowPipeline.from_pretrained(args.checkpoint, device=load_to, use_ema=not args.raw,
                                               torch_dtype=torch_dtype(args.dtype))
    if args.offload:
        pipe.enable_offload(device)
    if args.attention is not None:
        pipe.set_attention_backend(args.attention)
    if args.vae_tiling is not None:
        pipe.enable_vae_tiling(args.vae_tiling)
    if args.compile:
        pipe.compile()
    pipe.enable_parallel(args.parallel)
    result = pipe(args.prompt, num_frames=args.frames, height=args.height, width=args.width,
                  image=args.image, num_inference_steps=steps, first_steps=first,
                  guidance_scale=args.guidance, video_guidance_scale=args.video_guidance, seed=args.seed,
                  use_cache=not args.no_cache, step_rule=args.step_rule, output_type="pt",
                  progress=main and not args.quiet)
    video = result.frames[0]
    if out.suffix.lower() in (".png", ".jpg", ".jpeg") and video.shape[0] != 1:
        raise ValueError(f"--out {out.name} holds one frame, but {video.shape[0]} were generated: "
                         "use .mp4 or .gif, or --frames 1")
    if not main:  # other processes of a parallel launch computed the same video
        return 0
    write_video(out, video.cpu(), fps=pipe.config.fps)
    count = video.shape[0]
    print(f"wrote {out} ({count} frame{'s' if count != 1 else ''}, {video.shape[2]}x{video.shape[3]})")
    return 0
