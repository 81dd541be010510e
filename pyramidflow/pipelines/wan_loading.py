"""The parts of a Wan pipeline folder (a diffusers ``WanPipeline`` or a saved
``PyramidalWanPipeline``) and the :class:`PipelineConfig` they are sampled with
(:mod:`pyramidflow.pipelines.wan` explains both layouts and the defaults)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from pyramidflow.config import from_dict, to_dict
from pyramidflow.errors import PyramidflowError
from pyramidflow.io.checksums import read_json, verify_checksums
from pyramidflow.models.wan_folder import PIPELINE_CLASS, WanFolder, load_wan_folder
from pyramidflow.pipelines.config import PipelineConfig, SamplingConfig
from pyramidflow.pyramid.config import PyramidConfig

SAVED_CLASS = "PyramidalWanPipeline"
WAN_CLASSES = (PIPELINE_CLASS, SAVED_CLASS)  # model_index.json classes this module reads
WAN_DEFAULTS = dict(height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0)
PYRAMID_HEIGHT = 448
PYRAMID_STEPS = {1: (50,), 2: (20, 10), 3: (20, 20, 10)}  # default steps per stage count
WAN_FPS = 16.0


def wan_pyramid(shift: float, pyramid: PyramidConfig | dict | None = None) -> PyramidConfig:
    """The pyramid over Wan latents: ``pyramid`` as given (a dict updates the default), by default three
    spatiotemporal stages with a causal first frame and the scheduler's ``shift`` within each stage.
    ``None`` -> Wan's own single full-resolution stage."""
    if isinstance(pyramid, PyramidConfig):
        return pyramid
    base = PyramidConfig(num_stages=3, temporal=True, causal_first_frame=True, shift=shift)
    if pyramid is None:
        return replace(base, num_stages=1)
    if not isinstance(pyramid, dict):
        raise PyramidflowError(f"pyramid must be a PyramidConfig, a dict of its fields or None, got "
                               f"{type(pyramid).__name__}")
    return from_dict(PyramidConfig, {**to_dict(base), **pyramid})


def wan_config(folder: WanFolder, pyramid: PyramidConfig | dict | None = None) -> PipelineConfig:
    """A :class:`PipelineConfig` for a Wan folder: its generation defaults, the pyramid, full sequence."""
    pyr = wan_pyramid(folder.shift, pyramid)
    # 480 rows do not halve into whole 2x2 patches twice (60 -> 30 -> 15 latent rows): PyramidalWan's
    # 448x832 is the default size of a pyramid over a folder that names none
    sized = {"height": PYRAMID_HEIGHT} if pyr.num_stages > 1 else {}
    gen = {**WAN_DEFAULTS, **sized, **folder.generation}
    steps = (int(gen["num_inference_steps"]),) if pyr.num_stages == 1 else PYRAMID_STEPS.get(
        pyr.num_stages, (10,) * pyr.num_stages)
    sampling = SamplingConfig(steps=steps, guidance=float(gen["guidance_scale"]))
    travel = gen.get("travel_frames")
    return PipelineConfig(space="latent", pyramid=pyr, frames=int(gen["num_frames"]),
                          height=int(gen["height"]), width=int(gen["width"]), fps=WAN_FPS, sampling=sampling,
                          travel_frames=None if travel is None else int(travel))


def load_wan_parts(path: Path, pyramid=None, torch_dtype: torch.dtype | None = None):
    """(transformer, text_encoder, vae, PipelineConfig) of a Wan or a saved pyramidal Wan folder."""
    index = read_json(path / "model_index.json")
    saved = isinstance(index, dict) and index.get("_class_name") == SAVED_CLASS
    if saved:
        verify_checksums(path)
    parts = load_wan_folder(path, dtype=torch_dtype or torch.float32,
                            pipeline_class=SAVED_CLASS if saved else None)
    folder = parts.folder
    if saved and pyramid is None:
        config = from_dict(PipelineConfig, index.get("config", {}))
    else:
        config = wan_config(folder, pyramid)
    return parts.transformer, parts.text_encoder, parts.vae, config
