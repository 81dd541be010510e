"""Who owns a training output folder: a new run never silently takes over another run's folder.

:func:`claim_run_dir` is called before a run writes anything. A new run (no resume) into a folder
holding checkpoints is refused with a one-line error, unless ``overwrite``: then the old run's
outputs (:data:`RUN_OUTPUTS`, its checkpoints and their temporaries) are removed first, and nothing
else in the folder is touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pyramidflow.errors import PyramidflowError
from pyramidflow.io.checkpoint import clean_stale_temporaries, list_checkpoints

# What training runs write into their folder besides checkpoint-STEP/ (flow and VAE runs).
RUN_OUTPUTS = ("pipeline", "vae", "samples", "logs", "metrics.jsonl", "final_metrics.json", "config.yaml",
               "config.json")


def claim_run_dir(out_dir: str | Path, resume: str | None = None, overwrite: bool = False,
                  main_process: bool | None = None) -> None:
    """Check (and with ``overwrite`` clear) ``out_dir`` for a run; see the module docstring. Only
    the ``main_process`` (default: :func:`is_main_process`) removes files; every process raises the
    same errors."""
    out_dir = Path(out_dir)
    if main_process is None:
        main_process = is_main_process()
    if resume and overwrite:
        raise PyramidflowError("--overwrite starts a new run and removes the old one; it cannot be combined "
                               "with --resume")
    if out_dir.exists() and not out_dir.is_dir():
        raise PyramidflowError(f"output folder {out_dir} is a file")
    found = list_checkpoints(out_dir)
    if resume or not found:
        return
    if not overwrite:
        raise PyramidflowError(f"{out_dir} already holds a run ({found[-1][1].name}): continue it with "
                               "--resume latest, replace it with --overwrite, or choose another folder")
    if main_process:
        clear_run_dir(out_dir)


def is_main_process() -> bool:
    """A lone process, or rank 0 of a multi-process launch (``RANK`` set by torchrun / accelerate)."""
    return int(os.environ.get("RANK", "0")) == 0


def clear_run_dir(out_dir: str | Path) -> list[Path]:
    """Remove a run's outputs from ``out_dir``; returns what was removed. Refuses a folder that holds
    no checkpoint (it may not be a run folder at all)."""
    out_dir = Path(out_dir)
    found = list_checkpoints(out_dir)
    if not found:
        raise PyramidflowError(f"{out_dir} holds no checkpoint-STEP folder (not a run folder); kept as is")
    removed = [path for _, path in found] + [out_dir / n for n in RUN_OUTPUTS if (out_dir / n).exists()]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed + clean_stale_temporaries(out_dir)
