"""File checksums and durable writes, shared by checkpoints, saved pipelines and the latent cache.

A *manifest* maps every file under a folder (relative POSIX path) to ``{"sha256", "bytes"}``.
:func:`file_manifest` makes one (and, with ``sync=True``, flushes every file and folder to the disk
on the way, so a later ``os.replace`` publishes data that survives a power cut);
:func:`verify_manifest` checks one and raises :class:`DamagedFileError` naming the first file that
is missing, has another size or another hash. Saved pipelines keep theirs in ``checksums.json``
(:func:`write_checksums` / :func:`verify_checksums`); checkpoints keep it in ``meta.json``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyramidflow.errors import DamagedFileError, OutOfSpaceError

CHECKSUMS = "checksums.json"
_BLOCK = 1 << 20


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | Path) -> None:
    """Flush a file or a folder (its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_manifest(root: str | Path, exclude: Iterable[str] = (), sync: bool = False) -> dict[str, dict]:
    """``{relative path: {"sha256", "bytes"}}`` of every file under ``root`` but ``exclude``;
    ``sync=True`` also fsyncs every file and folder."""
    root = Path(root)
    skip = set(exclude)
    out: dict[str, dict] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel in skip:
                continue
            out[rel] = {"sha256": sha256(path), "bytes": path.stat().st_size}
            if sync:
                fsync_path(path)
        if sync:
            fsync_path(folder)
    return out


def verify_manifest(root: str | Path, manifest: dict[str, Any], only: Iterable[str] | None = None) -> None:
    """Check the files of ``manifest`` under ``root`` (those starting with a prefix in ``only``, if
    given); raises :class:`DamagedFileError` naming the first bad file."""
    root = Path(root)
    prefixes = None if only is None else tuple(only)
    for rel, info in sorted(manifest.items()):
        if prefixes is not None and not rel.startswith(prefixes):
            continue
        path = root / rel
        if not path.is_file():
            raise DamagedFileError(f"{path} is missing")
        size = path.stat().st_size
        if size != info.get("bytes", size):
            raise DamagedFileError(f"{path} is truncated or damaged ({size} bytes, "
                                   f"{info['bytes']} were written)")
        if sha256(path) != info.get("sha256"):
            raise DamagedFileError(f"{path} is damaged (its sha256 differs from the one recorded when it "
                                   "was written)")


def read_json(path: str | Path) -> Any:
    """A JSON file; a :class:`DamagedFileError` naming it if it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedFileError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{path} is not valid JSON ({err})") from None


def write_json(path: str | Path, data: Any, sync: bool = False) -> None:
    """Write ``data`` as indented JSON (flushed to the disk with ``sync=True``)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2))
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def write_checksums(root: str | Path, exclude: Iterable[str] = ()) -> Path:
    """Record every file under a saved model folder (but ``exclude``) in ``root/checksums.json``."""
    root = Path(root)
    write_json(root / CHECKSUMS, {"files": file_manifest(root, exclude=[CHECKSUMS, *exclude])})
    return root / CHECKSUMS


def verify_checksums(root: str | Path, only: Iterable[str] | None = None) -> bool:
    """Check ``root`` against its ``checksums.json``; False if it has none (older saves)."""
    path = Path(root) / CHECKSUMS
    if not path.is_file():
        return False
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise DamagedFileError(f"{path} holds no file list")
    verify_manifest(root, data["files"], only)
    return True


def out_of_space(err: BaseException, folder: str | Path, needed: int | None = None) -> bool:
    """Did ``err`` come from a full disk under ``folder``? (the errno, the message, or the free space:
    some writers, e.g. ``torch.save``, report a full disk only as a failed write)."""
    seen: BaseException | None = err
    while seen is not None:
        if getattr(seen, "errno", None) == errno.ENOSPC or "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    free = free_bytes(folder)
    return free is not None and (free < (1 << 20) or (needed is not None and free < needed))


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the disk holding ``folder`` (None if unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def out_of_space_error(folder: str | Path, what: str, needed: int | None, after: str = "") -> OutOfSpaceError:
    """The one-line error for a full disk: the folder, the size needed (if known) and what is free."""
    free = free_bytes(folder)
    sizes = []
    if needed:
        sizes.append(f"about {megabytes(needed)} needed")
    if free is not None:
        sizes.append(f"{megabytes(free)} free")
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return OutOfSpaceError(f"no space left on the disk of {folder} to write {what}{detail}{after}")
