"""`pyramidflow train` under torchrun with 2 CPU processes (gloo): replicated and sharded (FSDP)
training give the weights of one process with the same global batch, sharded checkpoints keep the
unsharded layout (they resume in either mode) and a sharded run resumes where it stopped."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pipeline_pyramid_flow import PRESET, TINY, _weights

SETS = [a for item in [*TINY, "validation_prompts=0", "checkpoint_every=2"] for a in ("--set", item)]
ARGS = ["-m", "pyramidflow", "train", "--config", str(PRESET), "--quiet", *SETS]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(out: Path, steps: int, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    launch = [sys.executable]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes),
                  "--master_addr", "127.0.0.1", f"--master_port={port}"]
    done = subprocess.run([*launch, *ARGS, "--max-steps", str(steps), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _meta(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "meta.json").read_text())["extra"]


def _close(a: Path, b: Path, exact: bool = False) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    _run(out, 4)
    return out


def test_replicated_processes_match_one_process(one, tmp_path):
    done = _run(tmp_path / "two", 2, processes=2)
    assert done.stdout.count("done:") == 1  # reported by the main process only
    assert _meta(tmp_path / "two" / "checkpoint-2")["processes"] == 2
    _close(one / "checkpoint-2", tmp_path / "two" / "checkpoint-2")


def test_sharded_processes_match_one_process_and_resume(one, tmp_path):
    sharded = ["--set", "loop.parallel=fsdp"]
    # two steps, validating from the gathered EMA copy on the main process
    _run(tmp_path / "fsdp", 2, *sharded, "--set", "validation_prompts=2", "--set", "validate_every=2",
         processes=2)
    ckpt = tmp_path / "fsdp" / "checkpoint-2"
    assert _meta(ckpt)["processes"] == 2 and _meta(ckpt)["parallel"] == "fsdp"
    records = (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()
    assert sum("val/color" in r for r in records) == 1
    _close(one / "checkpoint-2", ckpt)
    # the optimizer state is written whole, in the unsharded layout
    a = torch.load(one / "checkpoint-2" / "optimizer_main.pt", weights_only=True)
    b = torch.load(ckpt / "optimizer_main.pt", weights_only=True)
    assert a["state"].keys() == b["state"].keys() and a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for key in a["state"][i]:
            torch.testing.assert_close(a["state"][i][key], b["state"][i][key], rtol=1e-4, atol=1e-7)
    # resumed sharded, and resumed by one unsharded process: both continue the same run
    unsharded = tmp_path / "unsharded"
    shutil.copytree(ckpt, unsharded / "checkpoint-2")
    _run(tmp_path / "fsdp", 4, *sharded, "--resume", "latest", processes=2)
    _run(unsharded, 4, "--resume", "latest")
    _close(one / "checkpoint-4", tmp_path / "fsdp" / "checkpoint-4")
    _close(one / "checkpoint-4", unsharded / "checkpoint-4")
