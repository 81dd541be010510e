"""Saving and loading pipelines: saved pipeline folders, training checkpoints, training outputs.

A saved pipeline (diffusers-style layout)::

    model_index.json     class, component classes, the PipelineConfig
    transformer/         PyramidDiT or PPFDiT, as its config.json names (config.json + safetensors)
    text_encoder/        the text encoder (embedded: weights + vocab.json)
    vae/                 latent-space models only

    checksums.json       sha256 and size of every other file but model_index.json (whose generation
                         defaults may be edited by hand); pipelines saved before it existed load too

A training checkpoint (``OUT/checkpoint-STEP``, see :mod:`pyramidflow.io.checkpoint`) carries its
whole training config as a plain dict in ``meta.json``; the pipeline's part of it is read by
:meth:`PipelineConfig.from_train_dict` (and the text encoder / VAE locations from the same dict), so
loading needs nothing from training. Its EMA weights are used by default. A training output folder
resolves to its newest checkpoint that is not damaged (with a warning for any passed over).

Every file read is first checked against the recorded checksums; a damaged, truncated or
unreadable file is a one-line :class:`DamagedFileError` naming it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch

from pyramidflow import __version__
from pyramidflow.config import from_dict, to_dict
from pyramidflow.errors import DamagedFileError, PyramidflowError
from pyramidflow.io.checkpoint import load_newest, read_meta, verify_checkpoint
from pyramidflow.io.checksums import read_json, verify_checksums, write_checksums, write_json
from pyramidflow.models import load_text_encoder, load_transformer
from pyramidflow.models.lora import attach_stage_adapters, split_stage_adapters
from pyramidflow.models.vae import PixelSpace, load_vae
from pyramidflow.pipelines.config import PipelineConfig
from pyramidflow.pipelines.wan_loading import WAN_CLASSES, load_wan_parts

INDEX = "model_index.json"
COMPONENTS = ("transformer", "text_encoder", "vae")
T = TypeVar("T")


def _weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _read(folder: Path, load: Callable[[], T]) -> T:
    """``load()`` a component saved in ``folder``; a file it cannot read becomes one line naming it."""
    try:
        return load()
    except (PyramidflowError, FileNotFoundError):  # already one line naming what is missing
        raise
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DamagedFileError(f"{folder} cannot be loaded: a file is missing, truncated or damaged "
                               f"({reason[:200]})") from None




def _from_index(path: Path):
    index = read_json(path / INDEX)
    if isinstance(index, dict) and index.get("_class_name") in WAN_CLASSES:
        return load_wan_parts(path)
    if not isinstance(index, dict) or index.get("_class_name") != "PyramidFlowPipeline":
        name = index.get("_class_name") if isinstance(index, dict) else None
        raise PyramidflowError(f"{path / INDEX} describes {name!r}, not a PyramidFlowPipeline")
    config = from_dict(PipelineConfig, index.get("config", {}))
    for name in ("transformer", "text_encoder") + (("vae",) if config.space == "latent" else ()):
        if not _weights(path / name):
            raise FileNotFoundError(f"incomplete pipeline {path}: {name}/ has no config.json and "
                                    "safetensors weights")
    verify_checksums(path)
    transformer = _read(path / "transformer",
                        lambda: load_transformer(path / "transformer", torch_dtype=torch.float32))
    text_encoder = _read(path / "text_encoder", lambda: load_text_encoder(path / "text_encoder"))
    vae = _read(path / "vae", lambda: load_vae(path / "vae")) if config.space == "latent" else None
    return transformer, text_encoder.float(), vae, config


def _train_config(ckpt: Path) -> dict:
    extra = read_meta(ckpt).get("extra")
    train = extra.get("config") if isinstance(extra, dict) else None
    if not isinstance(train, dict):
        raise PyramidflowError(f"{ckpt}: this checkpoint holds no training config (it was not written by "
                               "pyramidflow train)")
    return train


def _from_checkpoint(ckpt: Path, use_ema: bool):
    train = _train_config(ckpt)
    config = PipelineConfig.from_train_dict(train)
    text_cfg = train.get("text_encoder", {})

    def pick(name: str) -> Path | None:
        for folder in ((f"ema_{name}", name) if use_ema else (name,)):
            if _weights(ckpt / folder):
                return ckpt / folder
        return None

    folder = pick("transformer")
    if folder is None:
        raise FileNotFoundError(f"incomplete checkpoint {ckpt}: no transformer weights "
                                "(transformer/ or ema_transformer/ with config.json and safetensors)")
    text_folder = pick("text_encoder")
    if text_folder is None and not text_cfg.get("path"):
        raise FileNotFoundError(f"incomplete checkpoint {ckpt}: no text_encoder/ weights and the config "
                                "names no text_encoder.path")
    verify_checkpoint(ckpt, only=tuple(f"{f.name}/" for f in (folder, text_folder) if f is not None))
    transformer = _read(folder, lambda: _transformer_of(folder, train.get("model", {}),
                                                        config.pyramid.num_stages))
    if text_folder is not None:
        text_encoder = _read(text_folder, lambda: load_text_encoder(text_folder))
    else:
        text_encoder = load_text_encoder(text_cfg["path"], max_length=text_cfg.get("max_length"),
                                         cache_dir=text_cfg.get("cache_dir"))
    vae = _read(Path(train["vae"]), lambda: load_vae(train["vae"])) if config.space == "latent" else None
    return transformer, text_encoder, vae, config


def _transformer_of(folder: Path, model_cfg: dict, num_stages: int = 1):
    """A checkpoint's transformer; a LoRA run saved the adapted model (base + adapter weights), rebuilt
    here from its base (``model.pretrained``) and the adapter(s) before its weights are read."""
    if not model_cfg.get("lora_rank"):
        return load_transformer(folder, torch_dtype=torch.float32)
    from pyramidflow.io.checkpoint import load_model_weights
    from pyramidflow.models.lora import ATTENTION_TARGETS, add_lora

    model = load_transformer(model_cfg["pretrained"], torch_dtype=torch.float32)
    add_lora(model, model_cfg["lora_rank"], model_cfg.get("lora_alpha"),
             model_cfg.get("lora_targets") or ATTENTION_TARGETS,
             stages=num_stages if model_cfg.get("lora_per_stage") else 0)
    load_model_weights(model, folder)
    return model


def load_pipeline_parts(path: Path, use_ema: bool = True):
    """(transformer, text_encoder, vae, PipelineConfig) from any of the three layouts."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if (path / INDEX).is_file():
        parts = _from_index(path)
        attach_stage_adapters(parts[0], path / "lora")
        return parts
    if (path / "meta.json").is_file():
        return _from_checkpoint(path, use_ema)
    found = load_newest(path, lambda ckpt: _from_checkpoint(ckpt, use_ema)) if path.is_dir() else None
    if found is None:
        raise FileNotFoundError(f"{path} is not a pipeline ({INDEX}), a checkpoint (meta.json) or a "
                                "training output folder (checkpoint-STEP/ inside)")
    return found[1]


def move_module(module: torch.nn.Module, device, dtype: torch.dtype | None = None) -> None:
    """``module.to(device, dtype)``, keeping the parameters a diffusers model marks as float32-only
    (``_keep_in_fp32_modules``: time embedding, modulation tables, norms) in float32 when ``dtype`` is
    a 16-bit float, as ``from_pretrained(torch_dtype=...)`` does: the model then runs in 16 bits and
    computes its modulation from float32 tables (docs/maths.md section 13)."""
    if dtype is None:
        module.to(device)
        return
    with _quiet_diffusers():  # it warns that .to() ignores float32-only modules: restored just below
        module.to(device=device, dtype=dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or ()
    if dtype in (torch.float16, torch.bfloat16) and keep:
        for name, param in module.named_parameters():
            if any(k in name.split(".") for k in keep):
                param.data = param.data.float()


def _save_component(module, folder: Path, dtype: torch.dtype | None) -> list[str]:
    if not hasattr(module, "save_pretrained"):
        raise PyramidflowError(f"cannot save {type(module).__name__}: it has no save_pretrained")
    if dtype is not None and isinstance(module, torch.nn.Module):
        module = copy.deepcopy(module)
        with _quiet_diffusers():  # it warns that casting by .to() ignores float32-only modules: intended
            module.to(dtype)
    module.save_pretrained(folder)
    return [type(module).__module__.split(".")[0], type(module).__name__]


@contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def save_pipeline(pipe, path: Path, weights_dtype: torch.dtype | None = None) -> Path:
    """Write the layout of the module docstring (``weights_dtype``: e.g. float16 to halve the size)."""
    path.mkdir(parents=True, exist_ok=True)
    index: dict = {"_class_name": "PyramidFlowPipeline", "_pyramidflow_version": __version__}
    for name in COMPONENTS:
        module = getattr(pipe, name)
        if name == "transformer":  # per-stage LoRA adapters: base weights + lora/stage{k}/
            module = split_stage_adapters(module, path / "lora")
        skip = module is None or isinstance(module, PixelSpace)  # pixel space has nothing to save
        index[name] = None if skip else _save_component(module, path / name, weights_dtype)
    index["config"] = to_dict(pipe.config)
    write_json(path / INDEX, index)
    write_checksums(path, exclude=[INDEX])  # the generation defaults in it stay editable by hand
    return path
