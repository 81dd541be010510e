"""A diffusers Wan2.1 text-to-video pipeline folder, read from a local path.

The layout ``WanPipeline.save_pretrained`` writes (and the hub's ``Wan2.1-T2V-1.3B-Diffusers``)::

    model_index.json   {"_class_name": "WanPipeline", "vae": ["diffusers", "AutoencoderKLWan"], ...}
    transformer/       WanTransformer3DModel: config.json + safetensors (possibly sharded, bf16)
    vae/               AutoencoderKLWan
    text_encoder/      UMT5EncoderModel
    tokenizer/         its tokenizer (T5Tokenizer / T5TokenizerFast)
    scheduler/         FlowMatchEulerDiscreteScheduler (``shift``) or UniPCMultistepScheduler (``flow_shift``)

:func:`inspect_wan_folder` checks a folder without loading weights and says in one line what is
wrong (a missing file or component, another pipeline class); :func:`load_wan_folder` loads the
parts as this project's models: the transformer as :class:`PyramidDiT` (parameter names are Wan's,
so the weights load as they are), the VAE through :class:`WanVAE`, the encoder with its sibling
tokenizer. An optional ``generation.json`` beside ``model_index.json`` holds the defaults the model
was made for (``height``, ``width``, ``num_frames``, ``num_inference_steps``, ``guidance_scale``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyramidflow.errors import PyramidflowError

PIPELINE_CLASS = "WanPipeline"
# component -> the classes this project reads in that slot
COMPONENTS = {
    "transformer": ("WanTransformer3DModel", "PyramidDiT", "PPFDiT"),
    "vae": ("AutoencoderKLWan",),
    "text_encoder": ("UMT5EncoderModel", "T5EncoderModel"),
    "tokenizer": None,  # any tokenizer class: it is read with AutoTokenizer
    "scheduler": ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler"),
}
GENERATION_KEYS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale",
                   "travel_frames")  # the last: shapes models only (the motion scale the evaluator reads)
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")


@dataclass
class WanFolder:
    """What :func:`inspect_wan_folder` found: the folder, its scheduler shift and generation defaults."""

    path: Path
    shift: float
    generation: dict = field(default_factory=dict)

    def part(self, name: str) -> Path:
        return self.path / name


def _class_of(entry) -> str | None:
    """The class name of a model_index.json entry ``[library, class]`` (None for an absent slot)."""
    if isinstance(entry, list | tuple) and len(entry) == 2:
        return entry[1]
    return None


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {path} is missing") from None
    except (OSError, ValueError) as err:
        raise PyramidflowError(f"{what}: {path} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise PyramidflowError(f"{what}: {path} does not hold a JSON object")
    return data


def is_wan_folder(path: str | Path) -> bool:
    """Whether ``path`` has a model_index.json that names a Wan pipeline (any Wan class)."""
    index = Path(path) / "model_index.json"
    try:
        return str(json.loads(index.read_text()).get("_class_name", "")).startswith("Wan")
    except (OSError, ValueError, AttributeError):
        return False


def inspect_wan_folder(path: str | Path, pipeline_class: str | None = None) -> WanFolder:
    """Check that ``path`` is a diffusers Wan text-to-video pipeline folder (no weights are read);
    ``pipeline_class``: the class model_index.json must name (default ``WanPipeline``).

    Raises FileNotFoundError / PyramidflowError with one line: the missing file or component, or
    the pipeline / component class found instead of the expected one.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no Wan pipeline folder at {path}")
    index = _read_json(path / "model_index.json", f"{path} is not a diffusers pipeline folder")
    name, expected = index.get("_class_name"), pipeline_class or PIPELINE_CLASS
    if name != expected:
        raise PyramidflowError(f"{path} holds a {name!r} pipeline, not a Wan text-to-video pipeline "
                               f"({expected})")
    if _class_of(index.get("transformer_2")) is not None:
        raise PyramidflowError(f"{path} has two transformers (transformer_2: a Wan2.2 mixture of experts); "
                               "only single-transformer Wan2.1 pipelines are supported")
    for part, valid in COMPONENTS.items():
        found = _class_of(index.get(part))
        if found is None:
            raise PyramidflowError(f"{path}/model_index.json names no {part} (a Wan T2V pipeline has "
                                   f"{', '.join(COMPONENTS)})")
        if valid is not None and found not in valid:
            raise PyramidflowError(f"{path}: the {part} is a {found}, expected {' or '.join(valid)}")
        folder = path / part
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: the {part}/ folder is missing")
        if part in ("transformer", "vae", "text_encoder"):
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{folder}: config.json is missing")
            if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
                raise FileNotFoundError(f"{folder}: no safetensors weights (only safetensors are read)")
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json", f"{path}: the scheduler")
    shift = scheduler.get("shift") if "flow_shift" not in scheduler else scheduler.get("flow_shift")
    generation = {}
    if (path / "generation.json").is_file():
        generation = _read_json(path / "generation.json", f"{path}: the generation defaults")
        unknown = sorted(set(generation) - set(GENERATION_KEYS))
        if unknown:
            raise PyramidflowError(f"{path / 'generation.json'}: unknown keys {unknown}; valid: "
                                   f"{', '.join(GENERATION_KEYS)}")
    return WanFolder(path, float(shift if shift is not None else 1.0), generation)


@dataclass
class WanParts:
    """The loaded parts of a Wan folder, as this project's models."""

    transformer: torch.nn.Module  # PyramidDiT
    vae: torch.nn.Module  # WanVAE
    text_encoder: torch.nn.Module  # PretrainedTextEncoder
    folder: WanFolder


def load_wan_folder(path: str | Path, dtype: torch.dtype = torch.float32,
                    text_dtype: torch.dtype | None = None, vae_dtype: torch.dtype = torch.float32,
                    max_length: int = 512, pipeline_class: str | None = None) -> WanParts:
    """Load the transformer (as :class:`PyramidDiT`, or the PPFDiT a saved folder names, in ``dtype``),
    the VAE (``vae_dtype``; Wan's own pipeline decodes in float32) and the text encoder (``text_dtype``,
    default ``dtype``) of the Wan pipeline folder at ``path`` (:func:`inspect_wan_folder` first, with
    ``pipeline_class``)."""
    from pyramidflow.models.ppf import load_transformer
    from pyramidflow.models.text_encoders import PretrainedTextEncoder
    from pyramidflow.models.vae.wan import WanVAE

    folder = inspect_wan_folder(path, pipeline_class)
    transformer = load_transformer(folder.part("transformer"), torch_dtype=dtype).eval()
    vae = WanVAE.from_pretrained(folder.part("vae"), torch_dtype=vae_dtype)
    text_encoder = PretrainedTextEncoder(folder.part("text_encoder"), max_length=max_length,
                                         dtype=text_dtype or dtype, tokenizer_path=folder.part("tokenizer"))
    return WanParts(transformer, vae, text_encoder, folder)
