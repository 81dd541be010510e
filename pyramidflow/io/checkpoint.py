"""Atomic, checksummed, resumable training checkpoints shared by every trainer.

Layout of ``OUT/checkpoint-STEP/``::

    meta.json                    step, data position, extra (JSON), what was saved, ``files``: the
                                 sha256 and size of every other file, and its own sha256 (written last)
    NAME/                        each model via ``save_pretrained`` (diffusers layout, safetensors)
    ema_NAME/ or ema_NAME.pt     EMA copy (a ModelMixin) or an EMA object's ``state_dict``
    optimizer_NAME.pt            ``optimizer.state_dict()`` (plain tensors and numbers)
    scheduler_NAME.pt            ``scheduler.state_dict()``
    rng.pt                       python, numpy and torch (CPU and CUDA) generator states

Everything is written into a temporary sibling ``.tmp-checkpoint-STEP-PID``, flushed to the disk
(every file and folder) and moved into place with ``os.replace``, so a crash mid-save never damages
the last good checkpoint; a failed save removes its temporary folder, a killed one leaves it for
:func:`clean_stale_temporaries` (run at the start of training). A full disk is reported as
:class:`OutOfSpaceError` with the space needed. ``keep_last`` pruning only removes checkpoints
older than the one just written (renamed aside first, so a half-deleted one is never taken for a
checkpoint).

Loading checks every file against ``meta.json`` (checkpoints written before checksums existed are
loaded unchecked) and raises :class:`DamagedFileError` naming the bad file; :func:`load_newest`
falls back from a damaged newest checkpoint to the newest one that loads, with one warning per
checkpoint it passes over. ``.pt`` files are read with ``torch.load(weights_only=True)``: they hold
only tensors and plain Python values.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file

from pyramidflow.errors import DamagedFileError, PyramidflowError, PyramidflowWarning
from pyramidflow.io.checksums import (
    file_manifest,
    fsync_path,
    out_of_space,
    out_of_space_error,
    read_json,
    verify_manifest,
    write_json,
)

_NAME = re.compile(r"^checkpoint-(\d+)$")
_TEMPORARY = re.compile(r"^\.(tmp|old)-checkpoint-(\d+)-(\d+)$")  # kind, step, pid of the writer
META = "meta.json"
T = TypeVar("T")


class CheckpointWarning(PyramidflowWarning):
    """A damaged checkpoint was passed over for an older one."""


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
        if match and (child / META).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_checkpoint(out_dir: str | Path, which: str) -> Path | None:
    """``"latest"`` -> newest checkpoint in ``out_dir`` (None if there is none); else a path.
    Nothing is read: :func:`load_newest` is the loading counterpart that skips damaged ones."""
    if which == "latest":
        found = list_checkpoints(out_dir)
        return found[-1][1] if found else None
    path = Path(which)
    if not (path / META).is_file():
        raise FileNotFoundError(f"not a checkpoint directory (no meta.json): {path}")
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json``; :class:`DamagedFileError` naming it if it is unreadable."""
    file = Path(path) / META
    if not file.is_file():
        raise FileNotFoundError(f"not a checkpoint directory (no meta.json): {path}")
    meta = read_json(file)
    step = meta.get("step") if isinstance(meta, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):
        raise DamagedFileError(f"{file} is damaged: it holds no step number")
    if "meta_sha256" in meta and meta["meta_sha256"] != _meta_digest(meta):
        raise DamagedFileError(f"{file} is damaged (its sha256 differs from the one recorded in it)")
    return meta


def _meta_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of ``meta.json``'s content but this digest itself (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verify_checkpoint(path: str | Path, only: tuple[str, ...] | None = None) -> bool:
    """Check a checkpoint's files (those under the prefixes ``only``, if given) against the sizes and
    sha256 in its ``meta.json``; False for a checkpoint written before checksums were recorded."""
    files = read_meta(path).get("files")
    if files is None:
        return False
    if not isinstance(files, dict):
        raise DamagedFileError(f"{Path(path) / META} is damaged: its file list is not a mapping")
    verify_manifest(path, files, only)
    return True


def load_newest(out_dir: str | Path, load: Callable[[Path], T]) -> tuple[Path, T] | None:
    """``load`` the newest checkpoint under ``out_dir`` that loads: a checkpoint whose ``load`` raises
    :class:`DamagedFileError` is passed over with one warning. None if there is no checkpoint; a
    :class:`DamagedFileError` listing them all if every one is damaged."""
    found = list_checkpoints(out_dir)
    problems = []
    for _, path in reversed(found):
        try:
            result = load(path)
        except DamagedFileError as err:
            problems.append(str(err))
            continue
        for problem in problems:
            warnings.warn(f"passing over a damaged checkpoint: {problem}; using {path}", CheckpointWarning,
                          stacklevel=2)
        return path, result
    if problems:
        raise DamagedFileError(f"every checkpoint in {out_dir} is damaged: " + "; ".join(problems))
    return None


def clean_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Remove the ``.tmp-checkpoint-*`` / ``.old-checkpoint-*`` folders that saves of processes no
    longer running (or of this one) left in ``out_dir``; returns what was removed. Call it from one
    process of a run (the main one) before it saves."""
    out_dir = Path(out_dir)
    removed = []
    for child in sorted(out_dir.iterdir()) if out_dir.is_dir() else ():
        match = _TEMPORARY.match(child.name)
        if match and not _running_elsewhere(int(match.group(3))):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def _running_elsewhere(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _save_model(model: Any, target: Path) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(target, safe_serialization=True)
    else:
        raise PyramidflowError(f"cannot save {type(model).__name__}: models must have save_pretrained")


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) state: an estimate of what saving it writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _write_all(tmp: Path, models, optimizers, schedulers, ema, rng: bool) -> dict[str, list[str]]:
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
    return saved


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
    """Write ``out_dir/checkpoint-STEP`` atomically (module docstring), then keep the ``keep_last``
    newest of the checkpoints up to ``step``; checkpoints of later steps are never removed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    states = [m.state_dict() for m in models.values()] + [o.state_dict() for o in (ema or {}).values()]
    states += [o.state_dict() for o in (optimizers or {}).values()]
    needed = _tensor_bytes(states)
    del states
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        saved = _write_all(tmp, models, optimizers, schedulers, ema, rng)
        meta = {"step": step, "data_position": data_position, "extra": dict(extra or {}), "saved": saved,
                "files": file_manifest(tmp, sync=True)}
        meta["meta_sha256"] = _meta_digest(meta)
        write_json(tmp / META, meta, sync=True)
        fsync_path(tmp)
    except BaseException as err:  # KeyboardInterrupt too: never leave a half-written folder behind
        full = isinstance(err, Exception) and out_of_space(err, out_dir, needed)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            previous = [p.name for s, p in list_checkpoints(out_dir) if s != step]
            kept = f"; {previous[-1]} is intact" if previous else ""
            raise out_of_space_error(out_dir, final.name, needed, kept) from err
        raise
    if final.exists():  # re-saving a step: move the old one aside first, then drop it
        old = out_dir / f".old-checkpoint-{step}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(out_dir)
    if keep_last is not None and keep_last > 0:
        prune_checkpoints(out_dir, step, keep_last)
    return final


def prune_checkpoints(out_dir: str | Path, step: int, keep_last: int) -> list[Path]:
    """Remove all but the ``keep_last`` newest checkpoints of steps <= ``step`` (each renamed aside
    first, then deleted); later steps are left alone. Returns the removed paths."""
    out_dir = Path(out_dir)
    mine = [path for s, path in list_checkpoints(out_dir) if s <= step]
    removed = mine[: max(0, len(mine) - keep_last)]
    for path in removed:
        aside = out_dir / f".old-{path.name}-{os.getpid()}"
        os.replace(path, aside)
        shutil.rmtree(aside, ignore_errors=True)
    return removed


def _read_failure(file: Path, err: Exception) -> DamagedFileError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DamagedFileError(f"{file} cannot be read: it is truncated or damaged ({reason[:160]})")


def load_model_weights(model: Any, folder: Path) -> None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise DamagedFileError(f"no safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(file))
        except Exception as err:  # safetensors raises its own error type for truncated files
            raise _read_failure(file, err) from None
    check_state_matches(model.state_dict(), state, folder)
    model.load_state_dict(state, strict=True)


def check_state_matches(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                        where: Path) -> None:
    """One line naming the first tensor that a model and its saved weights disagree on."""
    for name, tensor in expected.items():
        if name not in found:
            raise PyramidflowError(f"{where} has no tensor {name!r}: the model was built with another "
                                   "config than the one this checkpoint was written with")
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise PyramidflowError(f"{where}: tensor {name!r} has shape {tuple(found[name].shape)} there but "
                                   f"{tuple(tensor.shape)} in the model: the model config changed since "
                                   "this checkpoint was written")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise PyramidflowError(f"{where} has tensor {extra[0]!r} that the model lacks: the model config "
                               "changed since this checkpoint was written")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DamagedFileError(f"{path} is missing") from None
    except Exception as err:  # zip / unpickling errors of a truncated or corrupted file
        raise _read_failure(path, err) from None


def load_checkpoint(
    path: str | Path,
    models: Mapping[str, Any] | None = None,
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    ema: Mapping[str, Any] | None = None,
    rng: bool = True,
    verify: bool = True,
) -> LoadedCheckpoint:
    """Restore the given objects in place from a checkpoint directory; returns step and positions.

    With ``verify`` every file is first checked against ``meta.json`` (:func:`verify_checkpoint`).
    A damaged file raises :class:`DamagedFileError`, a model of another shape a one-line
    :class:`PyramidflowError` naming the first tensor that differs.
    """
    path = Path(path)
    meta = read_meta(path)
    if verify:
        verify_checkpoint(path)
    for name, model in (models or {}).items():
        load_model_weights(model, path / name)
    for name, obj in (ema or {}).items():
        if (path / f"ema_{name}").is_dir():
            load_model_weights(obj, path / f"ema_{name}")
        else:
            obj.load_state_dict(_torch_load(path / f"ema_{name}.pt"))
    for kind, objs in (("optimizer", optimizers), ("scheduler", schedulers)):
        for name, obj in (objs or {}).items():
            file = path / f"{kind}_{name}.pt"
            if not file.is_file():
                raise FileNotFoundError(f"checkpoint {path} has no {kind} state for {name!r}")
            state = _torch_load(file)
            try:
                obj.load_state_dict(state)
            except (ValueError, KeyError, RuntimeError) as err:
                raise PyramidflowError(f"{file} does not fit this run's {kind} ({str(err).splitlines()[0]}): "
                                       "the model or its trainable parameters changed") from None
    if rng and (path / "rng.pt").is_file():
        restore_rng_state(_torch_load(path / "rng.pt"))
    return LoadedCheckpoint(path, int(meta["step"]), meta.get("data_position"), meta.get("extra", {}))
