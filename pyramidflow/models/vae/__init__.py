"""Video autoencoders behind one interface (:class:`VideoAutoencoder`).

* :class:`CausalVideoVAE` - this project's trainable causal 3D conv VAE.
* :class:`WanVAE` - diffusers' ``AutoencoderKLWan`` loaded from a local directory.
* :class:`PixelSpace` - the identity: pixel-space models use it where others use a VAE.

``load_vae(path)`` picks the right one from the directory's ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae.causal_vae import CausalVideoVAE
from pyramidflow.models.vae.interface import VideoAutoencoder
from pyramidflow.models.vae.pixel import PixelSpace, frames_to_model, model_to_frames, to_signed, to_unit
from pyramidflow.models.vae.tiling import tiled_apply
from pyramidflow.models.vae.wan import WanVAE

__all__ = ["CausalVideoVAE", "PixelSpace", "VideoAutoencoder", "WanVAE", "frames_to_model", "load_vae",
           "model_to_frames", "tiled_apply", "to_signed", "to_unit"]

_KNOWN = {"CausalVideoVAE": CausalVideoVAE, "AutoencoderKLWan": WanVAE}


def load_vae(path: str | Path, torch_dtype=None) -> VideoAutoencoder:
    """Load a VAE saved with ``save_pretrained`` (ours) or a diffusers ``AutoencoderKLWan`` folder."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"no VAE config.json in {path}")
    name = json.loads(config.read_text()).get("_class_name")
    if name not in _KNOWN:
        raise PyramidflowError(f"{config}: unsupported VAE class {name!r}; valid: {', '.join(_KNOWN)}")
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    return _KNOWN[name].from_pretrained(path, **kwargs).eval()
