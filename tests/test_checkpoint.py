"""Checkpoints: bit-exact resume, atomic writes, latest resolution, pruning, safe loading."""

import random

import numpy as np
import pytest
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from pyramidflow.io import checkpoint as ckpt
from pyramidflow.models.vae import CausalVideoVAE


def build(seed):
    torch.manual_seed(seed)
    model = CausalVideoVAE(
        latent_channels=2,
        block_out_channels=(4, 4),
        spatial_down=(True, False),
        temporal_down=(True, False),
        layers_per_block=1,
        decoder_layers_per_block=1,
        norm_groups=2,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=8)
    ema = EMAModel(model.parameters(), decay=0.9)
    return model, opt, sched, ema


def train(model, opt, sched, ema, steps):
    for _ in range(steps):
        x = torch.rand(2, 3, 3, 8, 8) * 2 - 1 + 0.01 * np.random.randn() + 0.01 * random.random()
        recon, mean, logvar = model(x)  # samples the posterior from the global torch RNG
        loss = (recon - x).abs().mean() + 1e-3 * (mean**2 + logvar.exp() - logvar).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.step(model.parameters())


def states(model, ema):
    return [p.detach().clone() for p in model.parameters()] + [p.clone() for p in ema.shadow_params]


def test_resume_is_bit_identical(tmp_path):
    n = 3
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    full = build(0)
    train(*full, 2 * n)
    expected = states(full[0], full[3])

    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    first = build(0)
    train(*first, n)
    model, opt, sched, ema = first
    path = ckpt.save_checkpoint(
        tmp_path, n, {"vae": model}, {"vae": opt}, {"vae": sched}, {"vae": ema}, data_position={"epoch": 0}
    )
    torch.manual_seed(999), np.random.seed(999), random.seed(999)  # disturb everything
    model, opt, sched, ema = second = build(1)
    found = ckpt.resolve_checkpoint(tmp_path, "latest")
    assert found == path
    info = ckpt.load_checkpoint(found, {"vae": model}, {"vae": opt}, {"vae": sched}, {"vae": ema})
    assert info.step == n and info.data_position == {"epoch": 0}
    train(*second, n)
    got = states(model, ema)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_crash_mid_save_keeps_last_good(tmp_path, monkeypatch):
    model, opt, sched, ema = build(0)
    good = ckpt.save_checkpoint(tmp_path, 1, {"vae": model}, {"vae": opt})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, {"vae": model}, {"vae": opt})
    monkeypatch.undo()
    assert ckpt.resolve_checkpoint(tmp_path, "latest") == good
    assert not (tmp_path / "checkpoint-2").exists()
    ckpt.load_checkpoint(good, {"vae": build(3)[0]})


def test_keep_last_and_errors(tmp_path):
    model, opt, _, _ = build(0)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, {"vae": model}, keep_last=2, extra={"loss": 0.5})
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert (tmp_path / "checkpoint-4" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert ckpt.resolve_checkpoint(tmp_path / "empty", "latest") is None
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        ckpt.resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-1"))
    with pytest.raises(FileNotFoundError, match="no optimizer state"):
        ckpt.load_checkpoint(tmp_path / "checkpoint-4", {"vae": model}, {"vae": opt})
