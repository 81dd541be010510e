"""Trainer: exact resume, process/accumulation invariance, divergence stop, checkpoints, LR."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_components import HashTextEncoder, TinyVideos, flow_trainer, tiny_wan

from pyramidflow.training.config import LoopConfig, OptimConfig, lr_lambda
from pyramidflow.training.trainer import TrainingDiverged

HERE = Path(__file__).parent


def _trainer(out, steps, **loop):
    text = HashTextEncoder()
    loop = {"batch_size": 8, "max_steps": steps, "ema_decay": 0.9, "checkpoint_every": 2, "progress": False,
            **loop}
    optim = OptimConfig(lr=1e-3, warmup_steps=2, schedule="cosine")
    return flow_trainer(tiny_wan(), text, TinyVideos(), out, LoopConfig(**loop), optim)


def _state(trainer):
    out = {f"m.{k}": v.clone() for k, v in trainer.modules["transformer"].state_dict().items()}
    out.update({f"t.{k}": v.clone() for k, v in trainer.modules["text_encoder"].state_dict().items()})
    out.update({f"e.{k}": v.clone() for k, v in trainer.ema.shadow["transformer"].items()})
    return out


def test_resume_is_bit_exact(tmp_path):
    straight = _trainer(tmp_path / "a", 4)
    straight.train()
    first = _trainer(tmp_path / "b", 4)
    first.train(max_steps=2)
    second = _trainer(tmp_path / "b", 4)
    assert second.resume("latest") == 2
    second.train()
    a, b = _state(straight), _state(second)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    ckpt = tmp_path / "a" / "checkpoint-4"
    assert (ckpt / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (ckpt / "ema_transformer" / "config.json").is_file() and (ckpt / "meta.json").is_file()
    assert sorted(p.name for p in (tmp_path / "a").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_gradient_accumulation_gives_the_same_update(tmp_path):
    one = _trainer(tmp_path / "a", 2)
    one.train()
    two = _trainer(tmp_path / "b", 2, grad_accum=2)
    two.train()
    a, b = _state(one), _state(two)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path):
    text = HashTextEncoder()
    loop = LoopConfig(batch_size=4, max_steps=10, checkpoint_every=1, progress=False)
    data = TinyVideos(n=4)
    trainer = flow_trainer(tiny_wan(), text, data, tmp_path, loop)
    trainer.train(max_steps=2)
    data.nan_at = 2  # every batch holds all four examples, so step 3 sees the NaN
    with pytest.raises(TrainingDiverged, match=r"main loss became non-finite .* at step 3; .*checkpoint-2"):
        trainer.train()
    assert (tmp_path / "checkpoint-2" / "meta.json").is_file() and not (tmp_path / "checkpoint-3").exists()


def test_lr_schedule_shapes():
    f = lr_lambda(OptimConfig(warmup_steps=4, schedule="cosine"), max_steps=14)
    assert [round(f(s), 4) for s in (0, 3, 4, 9, 14)] == [0.25, 1.0, 1.0, 0.5, 0.0]
    assert lr_lambda(OptimConfig(warmup_steps=0, schedule="linear"), 10)(5) == 0.5
    with pytest.raises(ValueError, match="constant, cosine, linear"):
        lr_lambda(OptimConfig(schedule="step"), 10)


def test_lr_schedule_wsd_decays_only_at_the_end_and_extends():
    f = lr_lambda(OptimConfig(warmup_steps=2, schedule="wsd", decay_steps=4), max_steps=10)
    assert [f(s) for s in (0, 1, 2, 5, 6, 7, 8, 9, 10)] == [0.5, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    # resuming with a larger budget while still stable keeps the rate and moves the decay
    g = lr_lambda(OptimConfig(warmup_steps=2, schedule="wsd", decay_steps=4), max_steps=20)
    assert g(5) == 1.0 and g(18) == 0.5
    short = lr_lambda(OptimConfig(warmup_steps=2, schedule="wsd", decay_steps=40), max_steps=10)
    assert [short(s) for s in (2, 6, 10)] == [1.0, 0.5, 0.0]  # decays over what there is
    with pytest.raises(ValueError, match="decay_steps"):
        lr_lambda(OptimConfig(warmup_steps=2, schedule="wsd", decay_steps=0), max_steps=10)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo): replicas identical, same update and loss as 1 process."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
           str(_free_port()), str(HERE / "ddp_worker.py"), str(tmp_path / "ddp"), "3"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    single = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "one"), "3"],
                            capture_output=True, text=True, timeout=240, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    assert "MULTI_CPU" in r0["backend"]
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    for k in one["state"]:
        torch.testing.assert_close(r0["state"][k], one["state"][k], rtol=1e-5, atol=1e-6)
    assert r0["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_ema_decay_warms_up():
    from pyramidflow.training.ema import ema_decay_at

    assert ema_decay_at(0.999, 0) == 0.1 and ema_decay_at(0.999, 90) == 0.91
    assert ema_decay_at(0.999, 10**6) == 0.999
    # the initial weights' share of the average after n updates
    share = 1.0
    for n in range(600):
        share *= ema_decay_at(0.999, n)
    assert share < 0.01 < 0.999**600


def _partly_frozen():
    """tiny_wan with everything outside the blocks frozen (as under LoRA)."""
    model = tiny_wan()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("blocks."))
    return model


def test_ema_averages_only_trainable_parameters_and_round_trips(tmp_path):
    """The EMA holds the trainable tensors only; the checkpoint's EMA copy is the live model with
    the averages in; resuming restores the averages; sampling swaps them in and back out."""
    model = _partly_frozen()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    loop = LoopConfig(batch_size=4, max_steps=2, ema_decay=0.5, checkpoint_every=2, progress=False)
    trainer = flow_trainer(model, HashTextEncoder(), TinyVideos(n=4), tmp_path, loop)
    shadow = trainer.ema.shadow["transformer"]
    assert set(shadow) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("patch_embedding") for n in shadow)
    trainer.train()
    key = "blocks.0.ffn.net.2.weight"
    live = dict(model.named_parameters())
    assert not torch.equal(shadow[key], live[key]) and not torch.equal(shadow[key], start[key])
    saved = type(model).from_pretrained(tmp_path / "checkpoint-2" / "ema_transformer")
    for name, p in saved.named_parameters():  # averages where trained, the (unchanged) weights elsewhere
        torch.testing.assert_close(p.detach(), shadow.get(name, start[name]), rtol=0, atol=0)
    again = flow_trainer(_partly_frozen(), HashTextEncoder(), TinyVideos(n=4), tmp_path, loop)
    assert again.resume("latest") == 2
    for name, avg in shadow.items():
        torch.testing.assert_close(again.ema.shadow["transformer"][name], avg, rtol=0, atol=0)
    weights = dict(again.modules["transformer"].named_parameters())
    before = weights[key].detach().clone()
    with again.sampling_modules():
        torch.testing.assert_close(weights[key].detach(), shadow[key], rtol=0, atol=0)
    torch.testing.assert_close(weights[key].detach(), before, rtol=0, atol=0)
