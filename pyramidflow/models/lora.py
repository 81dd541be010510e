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

The adapter adds ``(alpha / r) * B A x`` to a projection ``W x`` (Hu et al., LoRA); B starts at zero,
so an added adapter leaves the model unchanged until it is trained.
"""

from __future__ import annotations

import copy
import json
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
             targets: Sequence[str] = ATTENTION_TARGETS) -> nn.Module:
    """Freeze ``model`` and add one LoRA adapter of ``rank`` (scale ``alpha / rank``, default alpha =
    rank) on the linear layers named by ``targets`` (suffixes of module names); returns ``model``."""
    from peft import LoraConfig

    if rank < 1:
        raise PyramidflowError(f"LoRA rank must be >= 1, got {rank}")
    model.requires_grad_(False)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        target_modules=list(targets), init_lora_weights=True)
    model.add_adapter(config, adapter_name=ADAPTER)
    return model


def has_lora(model: nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def lora_config_dict(model: nn.Module) -> dict:
    """The adapter's peft config as plain JSON values (what the file header records)."""
    if not has_lora(model):
        raise PyramidflowError("this model has no LoRA adapter")
    config = model.peft_config[ADAPTER].to_dict()
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def save_lora(model: nn.Module, folder: str | Path) -> Path:
    """The adapter in diffusers' pipeline format (module docstring); returns the folder."""
    from diffusers import WanPipeline
    from peft import get_peft_model_state_dict

    folder = Path(folder)
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=state, weight_name=WEIGHT_NAME,
                                  transformer_lora_adapter_metadata=lora_config_dict(model))
    return folder


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter saved by :func:`save_lora` / ``WanPipeline.save_lora_weights`` (keys
    ``transformer.*``) or by ``save_lora_adapter`` (no prefix) into ``model``; returns ``model``."""
    from safetensors import safe_open

    path = Path(path)
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
    model.load_lora_adapter(str(file.parent), weight_name=file.name, prefix=prefix, adapter_name=ADAPTER,
                            use_safetensors=True)
    return model


@torch.no_grad()
def fused_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its adapter merged into the base weights and removed."""
    fused = copy.deepcopy(model)
    if has_lora(fused):
        fused.fuse_lora(lora_scale=1.0, adapter_names=[ADAPTER])
        fused.unload_lora()
    return fused
