"""``pyramidflow app``: serve the web app (registered by :mod:`pyramidflow.cli`)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app",
        help="serve a web page for text-to-video, image-to-video and text-to-image",
        description="Serve the web app on http://HOST:PORT. It lists every saved pipeline in checkpoints/ "
        "and each --checkpoint given (the first given is the default; without one, the shipped model). "
        'Needs Gradio: pip install -e ".[app]".',
    )
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="a saved pipeline, training checkpoint or training output folder (repeatable)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--out", default=None, help="folder for the results (default: a new temporary folder)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no start-up messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.app.server import launch

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        launch(args.checkpoint, host=args.host, port=args.port, out_dir=args.out, device=args.device,
               quiet=args.quiet)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        reason = err.strerror or "the port is in use or not allowed"
        raise ValueError(f"cannot serve on {args.host}:{args.port}: {reason}; choose another with --port") \
            from None
    return 0
