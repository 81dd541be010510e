"""Several processes for one generation (pyramidflow.models.parallel, pipelines.parallel): two gloo
processes under torchrun give what one process gives, for Ulysses sequence parallelism (even and
padded lengths, per-token timesteps, history units at fractional positions under block-causal
attention, the history and text caches, a guided autoregressive generation, the CLI) and for CFG
parallelism.

Tolerances: the exchanges are exact copies, but the kernels see differently shaped tensors (H/N heads
per attention call, S/N tokens per matrix product, half the batch under CFG), so sums may round in
another order: a few float32 ulps per call. Transformer calls must agree to 1e-5 (they do exactly or
to 4e-7 here); a generation compounds them through its Euler steps and guidance (w = 4 scales a
branch difference by up to 7), so latents of magnitude ~2 agree to 1e-4 (observed 1.6e-5)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from parallel_worker import CLI_ARGS, SHIPPED, generate, model_cases, ppf_cases, tiny_model, tiny_ppf
from PIL import Image

from pyramidflow.cli import main
from pyramidflow.errors import PyramidflowError
from pyramidflow.models.parallel import enable_ulysses
from pyramidflow.pipelines import PyramidFlowPipeline

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes),
              "--master_addr", "127.0.0.1", f"--master_port={port}"]
    done = subprocess.run([*launch, *args], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    done = torchrun(str(HERE / "parallel_worker.py"), str(out))
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)], out, done.stdout


def test_ulysses_transformer_calls_match_one_process(launched):
    launched = launched[0]
    one = model_cases(tiny_model())
    for name, expected in one.items():
        for rank in launched:
            torch.testing.assert_close(rank[name], expected, rtol=1e-5, atol=1e-5, msg=name)
        assert torch.equal(launched[0][name], launched[1][name]), name  # every process holds the output
    assert launched[0]["heads_error"] == ("Ulysses splits the 3 attention heads over 2 processes: "
                                          "use a number of processes that divides 3")


def test_ulysses_ppf_levels_match_one_process(launched):
    """A PPFDiT's coarse level (docs/maths.md section 9) is sharded and gathered like the finest."""
    one = ppf_cases(tiny_ppf())
    for name, expected in one.items():
        for rank in launched[0]:
            torch.testing.assert_close(rank[name], expected, rtol=1e-5, atol=1e-5, msg=name)


def test_ulysses_and_cfg_generations_match_one_process(launched):
    launched = launched[0]
    one = generate(PyramidFlowPipeline.from_pretrained(SHIPPED))
    for name in ("pipe_ulysses", "pipe_cfg"):
        torch.testing.assert_close(launched[0][name], one, rtol=1e-4, atol=1e-4, msg=name)
        assert torch.equal(launched[0][name], launched[1][name]), name


def test_cli_parallel_writes_once_and_matches_one_process(launched, tmp_path):
    _, out, stdout = launched  # the worker ends with `pyramidflow sample --parallel ulysses`
    assert stdout.count("wrote") == 1  # the main process only
    assert [p.name for p in (out / "cli").iterdir()] == ["x.png"]
    assert main(["sample", *CLI_ARGS, "--out", str(tmp_path / "x.png")]) == 0
    two, one = (np.asarray(Image.open(p)).astype(int) for p in (out / "cli" / "x.png", tmp_path / "x.png"))
    assert np.abs(two - one).max() <= 1  # 8-bit rounding of nearly equal values


def test_parallel_needs_a_launch(tmp_path, capsys):
    args = ["sample", "--checkpoint", str(SHIPPED), "--prompt", "a red circle", "--frames", "1",
            "--out", str(tmp_path / "x.png"), "--parallel", "cfg"]
    assert main(args) == 2
    assert "launch with torchrun --nproc_per_node N" in capsys.readouterr().err
    with pytest.raises(PyramidflowError, match="torch.distributed initialised"):
        enable_ulysses(tiny_model())
    with pytest.raises(PyramidflowError, match="unknown parallel mode 'ring'"):
        PyramidFlowPipeline.from_pretrained(SHIPPED).enable_parallel("ring")
