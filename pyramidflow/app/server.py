"""Starting the app: find the models, load the default one, build the page, serve it.

Binds to 127.0.0.1 unless told otherwise. Nothing is fetched from outside: telemetry and update
checks are off and the page uses system fonts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pyramidflow.app.registry import SHIPPED, ModelRegistry, discover
from pyramidflow.errors import PyramidflowError

INSTALL = 'the app needs Gradio: pip install -e ".[app]" (or pip install "pyramidflow[app]")'
QUEUE_SIZE = 32  # waiting generations; more are refused with a message


def require_gradio():
    """Gradio, or a one-line error saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as err:
        raise PyramidflowError(f"{INSTALL} ({err})") from None
    return gradio


def create_app(checkpoints: Sequence[str | Path] = (), out_dir: str | Path | None = None,
               device: str | None = None, scan: Path | None = SHIPPED):
    """(Gradio Blocks, registry, output folder): the page for the found models, queue enabled."""
    registry = ModelRegistry(discover(checkpoints, scan), device=device)  # bad folders fail first
    require_gradio()
    from pyramidflow.app.ui import build_app

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="pyramidflow-app-"))
    out.mkdir(parents=True, exist_ok=True)
    app = build_app(registry, out)
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app, registry, out


def launch(checkpoints: Sequence[str | Path] = (), host: str = "127.0.0.1", port: int = 7860,
           out_dir: str | Path | None = None, device: str | None = None, block: bool = True,
           quiet: bool = False):
    """Build and serve the app; returns the Blocks (serving in the background when ``block`` is False)."""
    from pyramidflow.app.ui import CSS, theme

    app, registry, out = create_app(checkpoints, out_dir, device)
    if not quiet:
        print(f"models: {', '.join(registry.names)} (default {registry.default}); results in {out}",
              flush=True)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
               allowed_paths=[str(out)], prevent_thread_lock=not block, quiet=quiet, ssr_mode=False,
               theme=theme(), css=CSS, footer_links=[])
    return app
