"""Child process of tests/test_faults.py: kill -9 a checkpoint save at many points of its course.

``python fault_worker.py ROOT [SAMPLED]``. A save of checkpoint-2 (pruning checkpoint-1, as
``keep_last=1`` does) is first run once under a profiler that records the calls it makes (Python
functions of the checkpoint code and the C functions they call). Every call that changes the disk
(writes, fsyncs, renames, removals) is a kill point, plus ``SAMPLED`` calls evenly spread over the
rest. For each point k, a forked copy of this process starts the same save and sends itself
SIGKILL at call k. After each kill the folder must hold a checkpoint that verifies and loads with
either the old or the new weights, the leftovers must be removable by ``clean_stale_temporaries``,
and a next save must work. Prints one JSON line: the number of calls, the points tried, how many
ended with each step loaded, and every failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from pyramidflow.io import checkpoint as ckpt

WATCHED = {ckpt.__file__, sys.modules["pyramidflow.io.checksums"].__file__, __file__}


class Tiny(torch.nn.Module):
    """A model with ``save_pretrained`` (safetensors + config.json), like the project's models."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(48, 48, generator=g))
        self.b = torch.nn.Parameter(torch.randn(48, generator=g))

    def save_pretrained(self, folder, safe_serialization=True) -> None:
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  os.path.join(folder, "model.safetensors"))
        Path(folder, "config.json").write_text("{}")


def states(seed: int):
    model = Tiny(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.w.sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def save(root: Path, step: int, seed: int) -> None:
    model, opt, sched = states(seed)
    ckpt.save_checkpoint(root, step, {"model": model}, {"main": opt}, {"main": sched},
                         data_position=step, keep_last=1)


# Calls that change the disk: every one of them is a kill point (others are sampled).
DISK = {"replace", "fsync", "rmtree", "unlink", "rmdir", "mkdir", "makedirs", "write", "save_file", "save",
        "write_text", "write_json", "_save_model", "prune_checkpoints", "fsync_path"}


def counting_profiler(kill_at: int | None, calls: list[tuple[str, str]]):
    """Records (caller, callee) of the calls made by the checkpoint code (and this file); sends
    SIGKILL to this process at call number ``kill_at``."""
    def profile(frame, event, arg):
        if event == "c_call" and frame.f_code.co_filename in WATCHED:
            calls.append((frame.f_code.co_name, getattr(arg, "__name__", "?")))
        elif event == "call" and frame.f_back is not None and frame.f_back.f_code.co_filename in WATCHED:
            calls.append((frame.f_back.f_code.co_name, frame.f_code.co_name))
        else:
            return
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return profile


def calls_of_a_save(root: Path) -> list[tuple[str, str]]:
    """(caller, callee) of the calls a save makes, in order."""
    save(root, 1, seed=1)
    calls: list[tuple[str, str]] = []
    sys.setprofile(counting_profiler(None, calls))
    try:
        save(root, 2, seed=2)
    finally:
        sys.setprofile(None)
    return calls


def check(root: Path) -> tuple[int, str | None]:
    """(step loaded, problem or None) after a killed save."""
    def load(path: Path):
        model, opt, sched = states(99)
        info = ckpt.load_checkpoint(path, {"model": model}, {"main": opt}, {"main": sched})
        return info.step, model

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a killed save must never leave a damaged checkpoint in view
        found = ckpt.load_newest(root, load)
    if found is None:
        return 0, "no checkpoint left"
    _, (step, model) = found
    expected = states(step)[0]  # checkpoint-STEP was saved from seed STEP
    if not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values(),
                                                 strict=True)):
        return step, f"checkpoint-{step} loads other weights"
    ckpt.clean_stale_temporaries(root)
    left = sorted(p.name for p in root.iterdir() if not p.name.startswith("checkpoint-"))
    if left:
        return step, f"left after cleaning: {left}"
    save(root, 3, seed=3)
    steps = [s for s, _ in ckpt.list_checkpoints(root)]
    if steps != [3] or not ckpt.verify_checkpoint(root / "checkpoint-3"):
        return step, "the next save failed"
    return step, None


def main(root: Path, sampled: int) -> None:
    torch.set_num_threads(1)  # nothing multi-threaded before fork
    calls = calls_of_a_save(root / "count")
    total = len(calls)
    template = root / "template"
    save(template, 1, seed=1)
    stride = max(1, total // max(1, sampled))
    disk = {k for k, (caller, callee) in enumerate(calls, start=1) if callee in DISK and caller != "sha256"}
    points = sorted(disk | set(range(1, total + 1, stride)))
    loaded: dict[int, int] = {}
    failures = []
    for k in points:
        folder = root / f"kill-{k}"
        shutil.copytree(template, folder)
        pid = os.fork()
        if pid == 0:  # the child: save, killed at call k
            sys.setprofile(counting_profiler(k, []))
            save(folder, 2, seed=2)
            sys.setprofile(None)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            failures.append(f"call {k}: the save was not killed (status {status})")
            continue
        try:
            step, problem = check(folder)
        except Exception as err:  # noqa: BLE001 - reported to the test
            step, problem = -1, f"{type(err).__name__}: {err}"
        loaded[step] = loaded.get(step, 0) + 1
        if problem:
            failures.append(f"call {k}: {problem}")
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"calls": total, "points": len(points), "loaded": loaded, "failures": failures}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10**6)
