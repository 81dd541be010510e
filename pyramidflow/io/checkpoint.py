"""Atomic, resumable training checkpoints shared by every trainer.

Layout of ``OUT/checkpoint-STEP/``::

    meta.json                    step, data position, extra (JSON), what was saved
    NAME/                        each model via ``save_pretrained`` (diffusers layout, safetensors)
    ema_NAME/ or ema_NAME.pt     EMA copy (a ModelMixin) or an EMA object's ``state_dict``
    optimizer_NAME.pt            ``optimizer.state_dict()`` (plain tensors and numbers)
    scheduler_NAME.pt            ``scheduler.state_dict()``
    rng.pt                       python, numpy and torch (CPU and CUDA) generator states

Everything is written into a temporary sibling directory first and moved into place with
``os.replace``, so a crash mid-save never damages the last good checkpoint. ``.pt`` files are read
with ``torch.load(weights_only=True)``: they hold only tensors and plain Python values.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from pyramidflow.errors import PyramidflowError

_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` found besides the states it restored in place."""

    path: Path
    step: int
    data_position: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> dict[str, Any]:
    """Generator states as tensors and plain values (safe for ``weights_only`` loading)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints under ``out_dir``, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for child in out_dir.iterdir():
        match = _NAME.match(child.name)
        if match and (child / "meta.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_checkpoint(out_dir: str | Path, which: str) -> Path | None:
    """``"latest"`` -> newest checkpoint in ``out_dir`` (None if there is none); else a path."""
    if which == "latest":
        found = list_checkpoints(out_dir)
        return found[-1][1] if found else None
    path = Path(which)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"not a checkpoint directory (no meta.json): {path}")
    return path


def _save_model(model: Any, target: Path) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(target, safe_serialization=True)
    else:
        raise PyramidflowError(f"cannot save {type(model).__name__}: models must have save_pretrained")


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    models: Mapping[str, Any],
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    ema: Mapping[str, Any] | None = None,
    rng: bool = True,
    data_position: Any = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write ``out_dir/checkpoint-STEP`` atomically and prune to the ``keep_last`` newest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    saved: dict[str, list[str]] = {"models": [], "ema": [], "optimizers": [], "schedulers": []}
    for name, model in models.items():
        _save_model(model, tmp / name)
        saved["models"].append(name)
    for name, obj in (ema or {}).items():
        if isinstance(obj, torch.nn.Module):
            _save_model(obj, tmp / f"ema_{name}")
        else:
            torch.save(obj.state_dict(), tmp / f"ema_{name}.pt")
        saved["ema"].append(name)
    for kind, objs in (("optimizer", optimizers), ("scheduler", schedulers)):
        for name, obj in (objs or {}).items():
            torch.save(obj.state_dict(), tmp / f"{kind}_{name}.pt")
            saved[f"{kind}s"].append(name)
    if rng:
        torch.save(capture_rng_state(), tmp / "rng.pt")
    meta = {"step": step, "data_position": data_position, "extra": dict(extra or {}), "saved": saved}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if final.exists():  # re-saving a step: move the old one aside first, then drop it
        old = out_dir / f".old-checkpoint-{step}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if keep_last is not None and keep_last > 0:
        for _, path in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def _load_model_weights(model: Any, folder: Path) -> None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    model.load_state_dict(state, strict=True)


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(
    path: str | Path,
    models: Mapping[str, Any] | None = None,
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    ema: Mapping[str, Any] | None = None,
    rng: bool = True,
) -> LoadedCheckpoint:
    """Restore the given objects in place from a checkpoint directory; returns step and positions."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"not a checkpoint directory (no meta.json): {path}")
    meta = json.loads(meta_file.read_text())
    for name, model in (models or {}).items():
        _load_model_weights(model, path / name)
    for name, obj in (ema or {}).items():
        if (path / f"ema_{name}").is_dir():
            _load_model_weights(obj, path / f"ema_{name}")
        else:
            obj.load_state_dict(_torch_load(path / f"ema_{name}.pt"))
    for kind, objs in (("optimizer", optimizers), ("scheduler", schedulers)):
        for name, obj in (objs or {}).items():
            file = path / f"{kind}_{name}.pt"
            if not file.is_file():
                raise FileNotFoundError(f"checkpoint {path} has no {kind} state for {name!r}")
            obj.load_state_dict(_torch_load(file))
    if rng and (path / "rng.pt").is_file():
        restore_rng_state(_torch_load(path / "rng.pt"))
    return LoadedCheckpoint(path, int(meta["step"]), meta.get("data_position"), meta.get("extra", {}))
