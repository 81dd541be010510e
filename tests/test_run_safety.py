"""A run never loses another run or itself: output-folder ownership, pruning only of its own older
checkpoints, resuming past damaged checkpoints, stale temporaries, SIGINT / SIGTERM."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_components import HashTextEncoder, TinyVideos, flow_trainer, tiny_wan

from pyramidflow.cli import main
from pyramidflow.errors import PyramidflowError, PyramidflowWarning
from pyramidflow.io.checkpoint import CheckpointWarning, list_checkpoints, verify_checkpoint
from pyramidflow.io.run_dir import claim_run_dir, clear_run_dir
from pyramidflow.training.config import LoopConfig
from pyramidflow.training.trainer import TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "shapes-tiny.yaml"
TINY = [
    "data.height=16", "data.width=16", "data.num_clips=64", "model.num_layers=1",
    "model.attention_head_dim=8", "model.num_attention_heads=2", "model.ffn_dim=32", "model.freq_dim=16",
    "text_encoder.dim=16", "text_encoder.num_layers=1", "text_encoder.vocab_captions=200",
    "loop.batch_size=4", "checkpoint_every=2", "validation_prompts=0", "sampling.steps=[2,2,2]",
    "optim.warmup_steps=2", "loop.keep_last=2",
]


def train_args(out, steps, *extra):
    args = ["train", "--config", str(PRESET), "--out", str(out), "--max-steps", str(steps), "--quiet"]
    for item in TINY:
        args += ["--set", item]
    return args + list(extra)


def _trainer(out, steps=4, data=None, **loop):
    loop = LoopConfig(**{"batch_size": 4, "max_steps": steps, "ema_decay": 0.9, "checkpoint_every": 2,
                         "progress": False, **loop})
    return flow_trainer(tiny_wan(), HashTextEncoder(), data or TinyVideos(n=4), out, loop)


def _steps(out):
    return [s for s, _ in list_checkpoints(out)]


def test_a_new_run_into_another_runs_folder_is_refused(tmp_path, capsys):
    """Reproduces: a fresh `train` into an --out holding a longer run printed `done`, pruned its own
    checkpoints at once (the old steps counted as newer) and overwrote pipeline/."""
    out = tmp_path / "run"
    assert main(train_args(out, 6)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(train_args(out, 2)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run (checkpoint-6)" in err
    assert "--resume latest" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # untouched
    # --overwrite replaces the old run: its checkpoints, pipeline and logs go, nothing else does
    (out / "notes.txt").write_text("mine")
    assert main(train_args(out, 2, "--overwrite")) == 0
    assert _steps(out) == [2] and (out / "pipeline" / "model_index.json").is_file()
    assert (out / "notes.txt").read_text() == "mine"
    assert main(train_args(out, 4, "--resume", "latest", "--overwrite")) == 2
    assert "cannot be combined with --resume" in capsys.readouterr().err


def test_pruning_never_removes_checkpoints_newer_than_the_run(tmp_path):
    """keep_last prunes only the run's own older checkpoints; a resumed run behind newer checkpoints
    of its folder is refused instead of mixing the two."""
    old = _trainer(tmp_path, steps=6)
    old.train()
    assert _steps(tmp_path) == [4, 6]
    fresh = _trainer(tmp_path, steps=2)
    with pytest.raises(PyramidflowError, match="holds checkpoints of another run"):
        fresh.train()
    behind = _trainer(tmp_path, steps=8)
    behind.resume(str(tmp_path / "checkpoint-4"))
    with pytest.raises(PyramidflowError, match=r"checkpoint-6; this run is at step 4"):
        behind.train()
    assert _steps(tmp_path) == [4, 6]
    from pyramidflow.io.checkpoint import save_checkpoint

    model = tiny_wan()
    for step in (1, 2, 3):  # a save behind newer checkpoints keeps them all
        save_checkpoint(tmp_path, step, {"m": model}, keep_last=1)
    assert _steps(tmp_path) == [3, 4, 6]


def test_claim_run_dir_and_clear_only_run_folders(tmp_path):
    claim_run_dir(tmp_path / "new")  # nothing there: fine
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "pipeline").mkdir()
    with pytest.raises(PyramidflowError, match="not a run folder"):
        clear_run_dir(tmp_path / "plain")
    assert (tmp_path / "plain" / "pipeline").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PyramidflowError, match="is a file"):
        claim_run_dir(tmp_path / "file")


def test_resume_latest_passes_over_a_damaged_checkpoint(tmp_path):
    _trainer(tmp_path, steps=4).train()
    weights = next((tmp_path / "checkpoint-4" / "transformer").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # one flipped bit in a weight
    weights.write_bytes(bytes(data))
    resumed = _trainer(tmp_path, steps=4)
    with pytest.warns(CheckpointWarning, match=rf"{weights.name} is damaged.*using .*checkpoint-2"):
        assert resumed.resume("latest") == 2


def test_resume_latest_with_nothing_to_resume_warns(tmp_path):
    trainer = _trainer(tmp_path / "empty", steps=2)
    with pytest.warns(PyramidflowWarning, match="nothing to resume in .*empty"):
        trainer.train(resume="latest")
    assert _steps(tmp_path / "empty") == [2]


def test_stale_temporaries_of_killed_saves_are_removed_at_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / f".tmp-checkpoint-2-{dead}", tmp_path / f".old-checkpoint-1-{dead}"]
    live = tmp_path / f".tmp-checkpoint-9-{os.getppid()}"  # a running process: maybe saving right now
    for folder in [*stale, live]:
        folder.mkdir()
        (folder / "meta.json").write_text("{")
    _trainer(tmp_path, steps=2).train()
    assert not any(p.exists() for p in stale) and live.is_dir()
    assert _steps(tmp_path) == [2]


class SignalAt(TinyVideos):
    """Sends ``signum`` to this process while the batch of ``step`` is read."""

    def __init__(self, signum, step, batch=4, **kw):
        super().__init__(**kw)
        self.signum, self.calls, self.at = signum, 0, step * batch

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.at + 1:
            os.kill(os.getpid(), self.signum)
        return super().__getitem__(i)


def test_sigterm_finishes_the_step_saves_and_stops(tmp_path):
    trainer = _trainer(tmp_path, steps=50, data=SignalAt(signal.SIGTERM, 2, n=4), checkpoint_every=0)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match=r"interrupted by SIGTERM at step 3; saved .*checkpoint-3"):
        trainer.train()
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert _steps(tmp_path) == [3]
    again = _trainer(tmp_path, steps=4)
    assert again.resume("latest") == 3


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_saves_and_exits_130(tmp_path):
    """Reproduces: Ctrl-C during `train` gave a 62-line traceback and no checkpoint."""
    out = tmp_path / "run"
    args = train_args(out, 100000, "--set", "log_every=1", "--set", "checkpoint_every=0")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "pyramidflow", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGINT at step" in lines[0] and "--resume latest" in lines[0]
    step = _steps(out)[-1]
    assert f"checkpoint-{step}" in lines[0] and not list(out.glob(".tmp-*"))
    assert verify_checkpoint(out / f"checkpoint-{step}")  # complete, every checksum matches
