"""Fault injection: kill -9 at every disk operation of a checkpoint save, truncated and bit-flipped
files (checkpoints and saved pipelines), a full disk (a small tmpfs, where this machine lets the test
mount one). Each fault ends in a usable state or a one-line error naming the file."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from fault_worker import states
from test_run_safety import train_args

from pyramidflow.cli import main
from pyramidflow.errors import DamagedFileError, OutOfSpaceError
from pyramidflow.io import checkpoint as ckpt

HERE = Path(__file__).parent


def test_kill_9_at_every_disk_operation_of_a_save(tmp_path):
    """A save killed anywhere leaves the old or the new checkpoint, whole; the leftovers are
    removable and the next save works (tests/fault_worker.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HERE / "fault_worker.py"), str(tmp_path), "8"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], report["failures"][:5]
    assert report["points"] >= 30 and set(report["loaded"]) == {"1", "2"}, report


def _save(root, step, seed, **kw):
    model, opt, sched = states(seed)
    return ckpt.save_checkpoint(root, step, {"model": model}, {"main": opt}, {"main": sched}, **kw)


def _load(path):
    model, opt, sched = states(99)
    return ckpt.load_checkpoint(path, {"model": model}, {"main": opt}, {"main": sched}).step


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_every_damaged_file_of_the_newest_checkpoint_is_passed_over(tmp_path, damage):
    template = tmp_path / "template"
    _save(template, 1, seed=1)
    _save(template, 2, seed=2)
    files = sorted(p.relative_to(template / "checkpoint-2") for p in (template / "checkpoint-2").rglob("*")
                   if p.is_file())
    assert len(files) >= 6
    for rel in files:
        run = tmp_path / uuid.uuid4().hex
        shutil.copytree(template, run)
        damage(run / "checkpoint-2" / rel)
        with pytest.raises(DamagedFileError, match=str(rel.name)):
            _load(run / "checkpoint-2")
        with pytest.warns(ckpt.CheckpointWarning, match=rf"{rel.name}.*; using .*checkpoint-1") as seen:
            path, step = ckpt.load_newest(run, _load)
        assert step == 1 and len(seen) == 1, rel
        shutil.rmtree(run)
    for rel in files[:1]:  # every checkpoint damaged: one line naming each
        damage(template / "checkpoint-1" / rel)
        damage(template / "checkpoint-2" / rel)
        every = r"every checkpoint .* is damaged: .*checkpoint-2.*checkpoint-1"
        with pytest.raises(DamagedFileError, match=every):
            ckpt.load_newest(template, _load)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main(train_args(out, 4)) == 0  # checkpoint-2, checkpoint-4, pipeline/
    return out


def _one_line_error(capsys, args, code=2) -> str:
    assert main(args) == code, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _sample(checkpoint, tmp_path):
    return ["sample", "--checkpoint", str(checkpoint), "--prompt", "a red circle", "--steps", "1,1,1",
            "--frames", "1", "--out", str(tmp_path / "x.png"), "--quiet"]


def test_damaged_files_on_the_command_line(run_dir, tmp_path, capsys):
    """Reproduces: corrupt safetensors / optimizer files gave 35-60-line tracebacks, `--resume
    latest` did not fall back, bit-flipped weights sampled noise with exit status 0."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    weights = next((run / "checkpoint-4" / "ema_transformer").glob("*.safetensors"))
    _flip(weights)
    err = _one_line_error(capsys, _sample(run / "checkpoint-4", tmp_path))
    assert str(weights) in err and "damaged" in err
    with pytest.warns(ckpt.CheckpointWarning, match=rf"{weights.name} is damaged.*; using .*checkpoint-2"):
        assert main(_sample(run, tmp_path)) == 0  # the run folder: its previous checkpoint
    _truncate(run / "checkpoint-2" / "optimizer_main.pt")
    err = _one_line_error(capsys, train_args(run, 6, "--resume", str(run / "checkpoint-2")))
    assert "optimizer_main.pt" in err and "truncated" in err
    (run / "checkpoint-2" / "meta.json").write_text('{"step": 2,')
    err = _one_line_error(capsys, _sample(run / "checkpoint-2", tmp_path))
    assert str(run / "checkpoint-2" / "meta.json") in err and "not valid JSON" in err
    err = _one_line_error(capsys, train_args(run, 6, "--resume", "latest"))
    assert "every checkpoint" in err and "ema_transformer" in err and "meta.json" in err


def test_damaged_pipeline_files(run_dir, tmp_path, capsys):
    pipeline = tmp_path / "pipeline"
    shutil.copytree(run_dir / "pipeline", pipeline)
    assert (pipeline / "checksums.json").is_file()
    weights = next((pipeline / "transformer").glob("*.safetensors"))
    _flip(weights)
    err = _one_line_error(capsys, _sample(pipeline, tmp_path))
    assert str(weights) in err and "damaged" in err
    (pipeline / "checksums.json").unlink()  # as saved before checksums: a truncated file still is one line
    _truncate(weights)
    err = _one_line_error(capsys, _sample(pipeline, tmp_path))
    assert str(pipeline / "transformer") in err and "truncated or damaged" in err


def test_resume_with_a_changed_model_shape_is_one_line(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    err = _one_line_error(capsys, train_args(run, 6, "--resume", "latest", "--set", "model.ffn_dim=48"))
    assert "tensor 'blocks.0.ffn" in err and "(48, 16) in the model" in err and "model config changed" in err


# ---------------------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs at tmp_path/disk (skipped where mounting is not allowed); always unmounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


class Wide(torch.nn.Module):
    """About 1.2 MB per checkpoint with its AdamW state: one fits on the small disk, two do not."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(320, 320))

    def save_pretrained(self, folder, safe_serialization=True):
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        save_file({"w": self.w.detach()}, os.path.join(folder, "model.safetensors"))


def _wide_state():
    model = Wide()
    opt = torch.optim.AdamW(model.parameters())
    model.w.sum().backward()
    opt.step()
    return {"model": model}, {"main": opt}


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(small_disk):
    """Reproduces: a full disk gave a 35-line traceback and left temporaries that blocked the resume."""
    models, opts = _wide_state()
    first = ckpt.save_checkpoint(small_disk, 1, models, opts)
    with pytest.raises(OutOfSpaceError) as info:
        ckpt.save_checkpoint(small_disk, 2, models, opts)
    message = str(info.value)
    assert f"no space left on the disk of {small_disk} to write checkpoint-2" in message
    assert "MB needed" in message and "MB free" in message and "checkpoint-1 is intact" in message
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoint-1"]  # no temporary left
    assert ckpt.verify_checkpoint(first)
    # a killed save's leftovers fill the disk until they are cleaned
    shutil.rmtree(first)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = small_disk / f".tmp-checkpoint-7-{dead}"
    stale.mkdir()
    (stale / "blob").write_bytes(b"\0" * (1600 << 10))
    with pytest.raises(OutOfSpaceError):
        ckpt.save_checkpoint(small_disk, 1, models, opts)
    assert ckpt.clean_stale_temporaries(small_disk) == [stale]
    assert ckpt.verify_checkpoint(ckpt.save_checkpoint(small_disk, 1, models, opts))


def test_full_disk_during_training_is_one_line(small_disk, capsys):
    out = small_disk / "run"
    args = train_args(out, 40, "--set", "checkpoint_every=1", "--set", "keep_last=10")
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and len(err.splitlines()) == 1 and "no space left" in err, err
    steps = [s for s, _ in ckpt.list_checkpoints(out)]
    assert steps and ckpt.verify_checkpoint(out / f"checkpoint-{steps[-1]}")
