"""On-disk latent cache: encode a dataset once, train from safetensors shards afterwards.

Layout of a cache directory::

    shard-00003-of-00010.safetensors   tensors "latents.K" (C, T, h, w), normalised; optionally
                                       "text.K" (L, D) and "text_mask.K" (L,) for item K
    shard-00003-of-00010.json          written last (completion marker): items (key, caption,
                                       source, shapes), the shard's sha256, the shared header
    index.json                         header (VAE, normalisation, clip size) + every shard's entry

Each shard is written to a temporary file and moved into place with ``os.replace``, so a killed
process leaves either a whole, checksummed shard or none. Shards are independent: any number of
processes can fill disjoint sets of them (``shards_for_worker``) and re-running skips shards that
are complete. ``write_index`` merges the per-shard records; it is safe to run from every worker.
This module imports no model: encoding happens in ``pyramidflow cache-latents``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pyramidflow.errors import PyramidflowError
from pyramidflow.io.checksums import sha256

INDEX = "index.json"
FORMAT_VERSION = 1


def shard_stem(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_ranges(num_items: int, shard_size: int) -> list[range]:
    """Item indices of each shard: contiguous blocks of ``shard_size``."""
    if shard_size <= 0:
        raise PyramidflowError(f"shard size must be >= 1, got {shard_size}")
    return [range(s, min(s + shard_size, num_items)) for s in range(0, num_items, shard_size)]


def shards_for_worker(num_shards: int, worker_id: int, num_workers: int) -> list[int]:
    """Shards handled by one of ``num_workers`` processes (round robin)."""
    if num_workers < 1 or not 0 <= worker_id < num_workers:
        raise PyramidflowError(f"worker id must be in 0..{num_workers - 1}, got {worker_id} of {num_workers}")
    return list(range(worker_id, num_shards, num_workers))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def shard_complete(root: Path, shard: int, num_shards: int, verify: bool = True) -> bool:
    """True if the shard and its record exist (and, with ``verify``, its checksum matches)."""
    stem = shard_stem(shard, num_shards)
    record, data = root / f"{stem}.json", root / f"{stem}.safetensors"
    if not (record.is_file() and data.is_file()):
        return False
    if not verify:
        return True
    return json.loads(record.read_text()).get("sha256") == sha256(data)


def write_shard(
    root: str | Path,
    shard: int,
    num_shards: int,
    tensors: Mapping[str, torch.Tensor],
    items: Sequence[Mapping[str, Any]],
    header: Mapping[str, Any],
) -> Path:
    """Write one shard atomically: tensors first, then its JSON record (the completion marker)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stem = shard_stem(shard, num_shards)
    data = root / f"{stem}.safetensors"
    tmp = root / f".{stem}.safetensors.tmp-{os.getpid()}"
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, data)
    record = {
        "shard": shard,
        "file": data.name,
        "sha256": sha256(data),
        "items": list(items),
        "header": dict(header),
    }
    _atomic_write_text(root / f"{stem}.json", json.dumps(record))
    return data


def write_index(root: str | Path, num_shards: int) -> dict[str, Any]:
    """Merge every complete shard's record into ``index.json``; returns the index."""
    index = merge_records(root, num_shards)
    _atomic_write_text(Path(root) / INDEX, json.dumps(index, indent=1))
    return index


def merge_records(root: str | Path, num_shards: int) -> dict[str, Any]:
    """The index built from the per-shard records present now (nothing is written)."""
    root = Path(root)
    shards, header = [], None
    for shard in range(num_shards):
        record_path = root / f"{shard_stem(shard, num_shards)}.json"
        if not record_path.is_file():
            continue
        record = json.loads(record_path.read_text())
        if header is not None and record["header"] != header:
            raise PyramidflowError(f"{record_path} was written with different settings than the other shards")
        header = record["header"]
        shards.append({k: record[k] for k in ("shard", "file", "sha256", "items")})
    return {
        "format_version": FORMAT_VERSION,
        "num_shards": num_shards,
        "complete": len(shards) == num_shards,
        "num_items": sum(len(s["items"]) for s in shards),
        "header": header or {},
        "shards": shards,
    }


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items of a latent cache: ``{"latents": (C, T, h, w), "caption": str, ...}``.

    ``latents`` are already normalised with the stored per-channel statistics (``header``); text
    embeddings appear as ``text_embeds`` (L, D) and ``text_mask`` (L,) when the cache holds them, and
    a cache built with ``pyramid_levels`` L gives ``clean_pyramid``: the definition-2 clean signals,
    coarse to fine (level L, ..., level 1, then ``latents``), as the flow-matching method reads them.
    ``verify=True`` checks every shard's sha256 on open.
    """

    def __init__(self, root: str | Path, verify: bool = False, allow_incomplete: bool = False) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"no latent cache index at {index_path} (run pyramidflow cache-latents)")
        index = json.loads(index_path.read_text())
        if index.get("format_version") != FORMAT_VERSION:
            raise PyramidflowError(f"{index_path}: unsupported cache format {index.get('format_version')!r}")
        if not index["complete"]:  # another worker may have finished after this index was written
            index = merge_records(self.root, index["num_shards"])
        if not index["complete"] and not allow_incomplete:
            raise PyramidflowError(
                f"latent cache {self.root} has {len(index['shards'])} of {index['num_shards']} shards; "
                "finish it with cache-latents (it resumes) or pass allow_incomplete=True"
            )
        self.header: dict[str, Any] = index["header"]
        self._items: list[tuple[str, dict[str, Any]]] = []
        for shard in index["shards"]:
            if verify and sha256(self.root / shard["file"]) != shard["sha256"]:
                raise PyramidflowError(
                    f"checksum mismatch in {self.root / shard['file']}: re-run cache-latents"
                )
            self._items += [(shard["file"], item) for item in shard["items"]]

    def __len__(self) -> int:
        return len(self._items)

    def caption(self, i: int) -> str:
        """The caption of item ``i`` (from the index; no tensor is read)."""
        return self._items[i][1].get("caption", "")

    def __getitem__(self, i: int) -> dict[str, Any]:
        file, item = self._items[i]
        key = item["key"]
        out: dict[str, Any] = {"caption": item.get("caption", ""), "source": item.get("source")}
        with safe_open(str(self.root / file), framework="pt") as fh:
            out["latents"] = fh.get_tensor(f"latents.{key}")
            if item.get("text_shape") is not None:
                out["text_embeds"] = fh.get_tensor(f"text.{key}")
                out["text_mask"] = fh.get_tensor(f"text_mask.{key}")
            levels = int(self.header.get("pyramid_levels", 0))
            if levels:
                lowered = [fh.get_tensor(f"pyramid.{level}.{key}") for level in range(levels, 0, -1)]
                out["clean_pyramid"] = [*lowered, out["latents"]]
        return out
