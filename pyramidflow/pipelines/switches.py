"""The pipeline's speed and memory switches (GPU paths), each also usable on a CPU.

* attention backend: :meth:`PyramidDiT.set_attention_backend` (``auto``: one SDPA call where every
  token sees every key, so PyTorch picks its flash / memory-efficient / cuDNN kernel on a GPU;
  block-causal plans as in docs/maths.md section 13; ``flex``: FlexAttention block masks);
* ``torch.compile`` of the transformer's blocks (:func:`compile_transformer`): each stage has its
  own static shapes, so each compiles once (autoregressive generation adds one graph per history
  length) and every later step of that stage reuses its graph;
* CPU offload of the text encoder and the autoencoder (:class:`Offload`): they live on the CPU and
  visit the transformer's device only while they encode or decode;
* VAE tiling: decoding large frames tile by tile with blended seams (docs/maths.md section 17,
  :func:`pyramidflow.models.vae.tiled_apply`), passed to the autoencoder's ``decode``.

bfloat16 end to end is ``PyramidFlowPipeline.from_pretrained(..., torch_dtype=torch.bfloat16)``:
the transformer, text encoder and autoencoder compute in it; the sampling state stays float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.pipelines.loading import move_module


def compile_transformer(transformer: nn.Module, **options) -> None:
    """Compile every block of ``transformer`` in place (``torch.compile(dynamic=False)`` unless
    ``options`` say otherwise, e.g. ``backend="eager"`` or ``mode="max-autotune"``): the blocks hold
    nearly all the work and are the same code, so one graph per token shape serves all of them."""
    if not getattr(transformer, "_repeated_blocks", None):
        raise PyramidflowError(f"cannot compile a {type(transformer).__name__}: it has no repeated blocks")
    transformer.compile_repeated_blocks(**{"dynamic": False, **options})


class Offload:
    """Keep modules on the CPU and bring one to ``device`` only while it is used.

    ``with offload.using(module): ...`` moves ``module`` to ``device`` (its dtype unchanged), runs the
    block, and moves it back to the CPU even if the block raises. A no-op when ``device`` is the CPU.
    """

    def __init__(self, device) -> None:
        self.device = torch.device(device)

    @property
    def active(self) -> bool:
        return self.device.type != "cpu"

    @contextmanager
    def using(self, module) -> Iterator[None]:
        if not (self.active and isinstance(module, nn.Module)):
            yield
            return
        move_module(module, self.device)
        try:
            yield
        finally:
            move_module(module, "cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def vae_tiling(tile_latent: int | None, overlap: int | None = None) -> dict:
    """``decode`` keyword arguments of a tiling setting (tiles of ``tile_latent`` latent pixels,
    overlapping by ``overlap``, default a quarter of a tile); {} for None (whole frames)."""
    if tile_latent is None:
        return {}
    overlap = max(1, tile_latent // 4) if overlap is None else int(overlap)
    if tile_latent < 2 or not 0 <= overlap < tile_latent:
        raise PyramidflowError(f"VAE tiling needs tile >= 2 latent pixels and 0 <= overlap < tile, "
                               f"got tile={tile_latent}, overlap={overlap}")
    return {"tile_latent": int(tile_latent), "tile_overlap": overlap}
