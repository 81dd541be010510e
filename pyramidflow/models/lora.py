"""LoRA adapters on the transformer (peft), saved and loaded in the formats diffusers users load.

* :func:`add_lora`: one adapter on the attention (and optionally feed-forward) projections; the base
  weights are frozen, only the adapter trains.
* :func:`save_lora`: the *pipeline* format of ``WanPipeline.save_lora_weights``: one
  ``pytorch_lora_weights.safetensors`` whose keys start with ``transformer.`` and whose header holds
  the adapter's config (rank, alpha, targets). ``WanPipeline.load_lora_weights(dir)`` reads it; without
  that metadata an adapter of alpha 16, rank 4 would reload with alpha 4 (the wrong scale).
* :func:`load_lora`: reads that format or the model-level one (``save_lora_adapter``: keys without
  the prefix), whichever the file holds, into a :class:`PyramidDiT` (whose parameter names are Wan's).
* :func:`fused_copy`: a copy with the adapter merged into the base weights (a plain model).
* Per-stage adapters (``add_lora(..., stages=K)``): one adapter per pyramid stage, ``stage0`` ...
  ``stage{K-1}``, all trained; :func:`activate_stage` selects the one a call at stage ``k`` uses
  (:func:`pyramidflow.models.velocity.call_model` does it when given the stage). They save as one
  pipeline-format folder per stage (``stage{k}/``) and cannot be fused into one set of weights;
  :func:`base_copy` gives the base model without them.

The adapter adds ``(alpha / r) * B A x`` to a projection ``W x`` (Hu et al., LoRA); B starts at zero,
so an added adapter leaves the model unchanged until it is trained.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pyramidflow.errors import PyramidflowError

ADAPTER = "default"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # self- and cross-attention of every block
FFN_TARGETS = ("ffn.net.0.proj", "ffn.net.2")


def add_lora(model: nn.Module, rank: int, alpha: float | None = None,
             targets: Sequence[str] = ATTENTION_TARGETS, stages: int = 0) -> nn.Module:
    """Freeze ``model`` and add one LoRA adapter of ``rank`` (scale ``alpha / rank``, default alpha =
    rank) on the linear layers named by ``targets`` (suffixes of module names), or, with ``stages``
    = K > 0, one such adapter per stage (``stage0`` active); returns ``model``."""
    from peft import LoraConfig

    if rank < 1:
        raise PyramidflowError(f"LoRA rank must be >= 1, got {rank}")
    if stages < 0:
        raise PyramidflowError(f"LoRA stages must be >= 0 (0: one adapter for all stages), got {stages}")
    model.requires_grad_(False)
    for name in stage_names(stages) or (ADAPTER,):
        config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                            target_modules=list(targets), init_lora_weights=True)
        with warnings.catch_warnings():  # several adapters in one model are intended here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            model.add_adapter(config, adapter_name=name)
    if stages:
        for p in _lora_parameters(model):
            p.requires_grad_(True)
        activate_stage(model, 0)
    return model


def stage_names(stages: int) -> list[str]:
    return [f"stage{k}" for k in range(int(stages))]


def has_lora(model: nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def _inner(model):
    """The model behind a call wrapper (e.g. the ``--parallel cfg`` batch splitter's ``.model``)."""
    while not hasattr(model, "peft_config") and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model
    return model


def stage_adapters(model: nn.Module) -> int:
    """How many per-stage adapters ``model`` (or the model a call wrapper holds) has (0: none, or one
    shared adapter)."""
    names = set(getattr(_inner(model), "peft_config", None) or ())
    count = sum(1 for n in names if n.startswith("stage") and n[5:].isdigit())
    return count if count and names == set(stage_names(count)) else 0


def activate_stage(model: nn.Module, stage: int) -> None:
    """Route the next calls of ``model`` through adapter ``stage{stage}`` (no-op without per-stage
    adapters). peft's ``set_adapter`` also toggles which adapters train; every adapter's trainability
    is kept as it was here, so one backward pass through calls at several stages trains every adapter
    it used, and a frozen teacher's adapters stay frozen."""
    count = stage_adapters(model)
    if not count:
        return
    if not 0 <= stage < count:
        raise PyramidflowError(f"stage {stage} has no adapter: this model has {count} per-stage adapters")
    model, name = _inner(model), f"stage{stage}"
    if list(model.active_adapters()) == [name]:
        return
    flags = [(p, p.requires_grad) for p in _lora_parameters(model)]
    model.set_adapter(name)
    for p, flag in flags:  # exactly as before: a frozen model's adapters stay frozen
        p.requires_grad_(flag)


def _lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".lora_" in n]


def lora_config_dict(model: nn.Module, adapter: str = ADAPTER) -> dict:
    """An adapter's peft config as plain JSON values (what the file header records)."""
    if not has_lora(model):
        raise PyramidflowError("this model has no LoRA adapter")
    config = model.peft_config[adapter].to_dict()
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def save_lora(model: nn.Module, folder: str | Path) -> Path:
    """The adapter in diffusers' pipeline format (module docstring), per-stage adapters one folder
    each (``folder/stage{k}``); returns the folder."""
    from diffusers import WanPipeline
    from peft import get_peft_model_state_dict

    folder = Path(folder)
    count = stage_adapters(model)
    for name, target in ([(n, folder / n) for n in stage_names(count)] or [(ADAPTER, folder)]):
        state = get_peft_model_state_dict(model, adapter_name=name)
        WanPipeline.save_lora_weights(target, transformer_lora_layers=state, weight_name=WEIGHT_NAME,
                                      transformer_lora_adapter_metadata=lora_config_dict(model, name))
    return folder


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter saved by :func:`save_lora` / ``WanPipeline.save_lora_weights`` (keys
    ``transformer.*``) or by ``save_lora_adapter`` (no prefix) into ``model``; a folder of
    ``stage{k}/`` folders loads per-stage adapters. Returns ``model``."""
    path = Path(path)
    stages = [p for p in path.glob("stage*") if p.is_dir() and p.name[5:].isdigit()] if path.is_dir() else []
    if stages:
        if [p.name for p in sorted(stages, key=lambda p: int(p.name[5:]))] != stage_names(len(stages)):
            raise PyramidflowError(f"{path}: per-stage adapters must be stage0 ... stage{len(stages) - 1}")
        for k in range(len(stages)):
            _load_one(model, path / f"stage{k}", f"stage{k}")
        activate_stage(model, 0)
        return model
    return _load_one(model, path, ADAPTER)


def _load_one(model: nn.Module, path: Path, adapter: str) -> nn.Module:
    from safetensors import safe_open

    file = path / WEIGHT_NAME if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise FileNotFoundError(f"no LoRA weights in {path} (expected {WEIGHT_NAME} or one .safetensors)")
        file = found[0]
    if not file.is_file():
        raise FileNotFoundError(f"no LoRA weights at {file}")
    with safe_open(str(file), framework="pt") as fh:
        keys = list(fh.keys())
    if not keys or not any("lora_A" in k for k in keys):
        raise PyramidflowError(f"{file} holds no LoRA weights (no lora_A keys)")
    prefix = "transformer" if all(k.startswith("transformer.") for k in keys) else None
    with warnings.catch_warnings():  # several adapters in one model are intended (per-stage)
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        model.load_lora_adapter(str(file.parent), weight_name=file.name, prefix=prefix, adapter_name=adapter,
                                use_safetensors=True)
    return model


@torch.no_grad()
def fused_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its adapter merged into the base weights and removed."""
    if stage_adapters(model):
        raise PyramidflowError("per-stage adapters cannot be merged into one set of weights: keep the base "
                               "model and the adapters (base_copy, save_lora)")
    fused = copy.deepcopy(model)
    if has_lora(fused):
        fused.fuse_lora(lora_scale=1.0, adapter_names=[ADAPTER])
        fused.unload_lora()
    return fused


@torch.no_grad()
def base_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without its adapters (the frozen base weights)."""
    base = copy.deepcopy(model)
    if has_lora(base):
        base.unload_lora()
    return base


def split_stage_adapters(model: nn.Module, lora_folder: str | Path) -> nn.Module:
    """For saving a pipeline: a model with per-stage adapters writes them to ``lora_folder``
    (``stage{k}/``) and returns its base copy (what ``transformer/`` holds); others return unchanged."""
    if not stage_adapters(model):
        return model
    save_lora(model, lora_folder)
    return base_copy(model)


def attach_stage_adapters(model: nn.Module, lora_folder: str | Path) -> nn.Module:
    """For loading a pipeline: the per-stage adapters of ``lora_folder`` (``stage0/`` ...), if any, onto
    ``model``. (A single adapter's folder is left alone: its weights are already merged.)"""
    folder = Path(lora_folder)
    if (folder / "stage0").is_dir():
        load_lora(model, folder)
    return model
