"""VAE trainer: losses, a short run, bit-exact resume, non-finite stop, GAN and perceptual paths."""

import json
import math

import pytest
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.io.checkpoint import list_checkpoints
from pyramidflow.models.vae import load_vae
from pyramidflow.training.methods import vae as vae_trainer
from pyramidflow.training.trainer import TrainingDiverged
from pyramidflow.training.vae.config import VAEModelConfig, VAETrainConfig
from pyramidflow.training.vae.losses import kl_divergence, psnr, reconstruction_terms, ssim


class Squares(torch.utils.data.Dataset):
    """Tiny moving squares, (T, 3, H, W) in [0, 1]; deterministic per index."""

    def __init__(self, n, frames=5, size=16, offset=0):
        self.n, self.frames, self.size, self.offset = n, frames, size, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i + self.offset)
        clip = torch.zeros(self.frames, 3, self.size, self.size)
        color = torch.rand(3, generator=g)
        y, x = torch.randint(0, self.size - 6, (2,), generator=g).tolist()
        for t in range(self.frames):
            clip[t, :, y : y + 5, x + t // 2 : x + t // 2 + 5] = color.view(3, 1, 1)
        return clip


def tiny_cfg(tmp_path, **kw):
    cfg = VAETrainConfig(
        model=VAEModelConfig(
            latent_channels=4,
            block_out_channels=(8, 8),
            spatial_down=(True, False),
            temporal_down=(True, False),
            norm_groups=4,
        ),
        output_dir=str(tmp_path),
        batch_size=2,
        max_steps=4,
        warmup_steps=1,
        log_every=1,
        val_every=2,
        checkpoint_every=2,
        keep_last=3,
    )
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def test_metrics_and_losses():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 3, 16, 16, generator=g)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    noisy = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    noisier = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert (ssim(a, noisy) > ssim(a, noisier)).all()
    torch.testing.assert_close(ssim(a, noisy), ssim(noisy, a))
    torch.testing.assert_close(psnr(a, a + 0.1), torch.full((2,), 20.0), rtol=1e-4, atol=1e-4)
    assert kl_divergence(torch.zeros(4), torch.zeros(4)).item() == 0.0
    # KL(N(1, e) || N(0, 1)) = 0.5 * (1 + e - 1 - 1) per element
    torch.testing.assert_close(kl_divergence(torch.ones(3), torch.ones(3)), torch.tensor(0.5 * (torch.e - 1)))


def test_chroma_term_sees_colour_not_grey_level():
    """(18.4): zero for a grey offset; for a greyed reconstruction, the exact colour distance."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    offset = x + 0.3 * torch.rand(2, 1, 3, 8, 8, generator=g, dtype=torch.float64)  # same offset on r, g, b
    assert reconstruction_terms(offset, x, 0, 0, 0, 2.0)["chroma"].item() == pytest.approx(0, abs=1e-15)
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    expected = 2.0 * (x - x.mean(dim=1, keepdim=True)).abs().mean()
    torch.testing.assert_close(reconstruction_terms(grey, x, 0, 0, 0, 2.0)["chroma"], expected)
    assert "chroma" not in reconstruction_terms(grey, x, 1.0, 0, 0)


def test_short_run_resume_is_bit_identical(tmp_path):
    train, val = Squares(8), Squares(2, offset=100)
    full = vae_trainer.train_vae(tiny_cfg(tmp_path / "a"), train, val, show_progress=False)
    assert full["step"] == 4 and 0 < full["val_psnr"] < 100
    vae_trainer.train_vae(tiny_cfg(tmp_path / "b"), train, val, show_progress=False, stop_at=2)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2]
    resumed = vae_trainer.train_vae(
        tiny_cfg(tmp_path / "b"), train, val, resume="latest", show_progress=False
    )
    assert resumed["val_psnr"] == full["val_psnr"]
    a, b = load_vae(tmp_path / "a" / "vae"), load_vae(tmp_path / "b" / "vae")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.config.latents_std == b.config.latents_std and len(a.config.latents_std) == 4
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "l1", "ssim", "kl", "lr"} <= set(lines[0]) and any("val/psnr" in x for x in lines)
    assert any((tmp_path / "a" / "logs").iterdir())


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    train = Squares(8)
    cfg = tiny_cfg(tmp_path, max_steps=2)
    vae_trainer.train_vae(cfg, train, None, show_progress=False)
    real_kl = vae_trainer.kl_divergence
    monkeypatch.setattr(vae_trainer, "kl_divergence", lambda m, lv: real_kl(m, lv) * float("nan"))
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        vae_trainer.train_vae(
            tiny_cfg(tmp_path, max_steps=4), train, None, resume="latest", show_progress=False
        )
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]


def test_discriminator_and_perceptual_paths(tmp_path):
    from transformers import ViTConfig, ViTModel

    vit_dir = tmp_path / "vit"
    ViTModel(
        ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
        )
    ).save_pretrained(vit_dir)
    cfg = tiny_cfg(tmp_path / "run", max_steps=2)
    cfg.loss.disc_weight, cfg.loss.disc_start = 0.1, 1
    cfg.loss.perceptual_model, cfg.loss.perceptual_weight = str(vit_dir), 0.1
    vae_trainer.train_vae(cfg, Squares(4), None, show_progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "gan" not in lines[0] and {"gan", "disc", "perceptual"} <= set(lines[1])
    assert (tmp_path / "run" / "checkpoint-2" / "discriminator" / "config.json").is_file()
    cfg.loss.perceptual_model, cfg.output_dir = str(tmp_path / "missing"), str(tmp_path / "run2")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        vae_trainer.train_vae(cfg, Squares(4), None, show_progress=False)


def test_train_vae_command(tmp_path, monkeypatch, capsys):
    from pyramidflow import cli
    from pyramidflow.training.vae import data as vae_data

    monkeypatch.setattr(
        vae_data, "build_vae_datasets", lambda cfg: (Squares(4, cfg.frames), Squares(2, cfg.frames, 16, 50))
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {latent_channels: 4, block_out_channels: [8, 8], spatial_down: [true, false],"
        " temporal_down: [true, false], norm_groups: 4}\n"
        "data: {frames: 5, height: 16, width: 16}\nbatch_size: 2\nwarmup_steps: 1\n"
    )
    args = [
        "train-vae",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
        "--set",
        "checkpoint_every=1",
    ]
    assert cli.main([*args, "--max-steps", "1"]) == 0
    assert cli.main([*args, "--max-steps", "2", "--resume", "latest"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "val_psnr=" in out
    assert [s for s, _ in list_checkpoints(tmp_path / "o")] == [1, 2]
    assert cli.main([*args, "--set", "loss.kl=oops"]) == 2
    assert "loss.kl" in capsys.readouterr().err


def test_video_folder_datasets_stride_val_folder_and_memory_cache(tmp_path):
    from pyramidflow.io import write_video
    from pyramidflow.training.vae.config import VAEDataConfig
    from pyramidflow.training.vae.data import InMemoryClips, build_vae_datasets

    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    train_dir.mkdir()
    val_dir.mkdir()
    g = torch.Generator().manual_seed(0)
    for name, folder in (("a.mp4", train_dir), ("b.mp4", train_dir), ("c.mp4", val_dir)):
        write_video(folder / name, torch.rand(13, 3, 16, 16, generator=g), fps=8)
    cfg = VAEDataConfig(source="folder", path=str(train_dir), frames=5, height=16, width=16, stride=4,
                        val_path=str(val_dir), num_val=2, cache_in_memory=True)
    with pytest.warns(UserWarning, match="no .txt caption"):
        train, val = build_vae_datasets(cfg)
    assert isinstance(train, InMemoryClips) and len(train) == 2 * 3  # starts 0, 4, 8 in 13 frames
    assert isinstance(val, InMemoryClips) and len(val) == 2  # validation clips are cached too
    assert all(val.base.base[i]["path"].endswith("c.mp4") for i in val.base.indices)
    first = train[0]
    assert train.store[0].dtype == torch.uint8
    torch.testing.assert_close(first, train.base[0]["video"], rtol=0, atol=0)  # 8-bit video: exact
    torch.testing.assert_close(train[0], first, rtol=0, atol=0)  # served from memory
    cfg.val_path, cfg.cache_in_memory = None, False
    with pytest.warns(UserWarning):
        train, val = build_vae_datasets(cfg)
    assert len(train) + len(val) == 6 and len(val) == 1  # a fifth at most is held out
    cfg.val_path, cfg.frames = str(val_dir), 17  # longer than the 13-frame validation file
    with pytest.warns(UserWarning), pytest.raises(PyramidflowError, match="no validation clips of 17"):
        build_vae_datasets(cfg)
    with pytest.raises(PyramidflowError, match="data.stride: only for video sources"):
        build_vae_datasets(VAEDataConfig(source="shapes", stride=2))


def test_a_diffusers_wan_vae_trains_resumes_and_saves_as_autoencoderklwan(tmp_path):
    # kind: wan trains diffusers' AutoencoderKLWan itself (the teacher's VAE of a Wan pipeline):
    # checkpoints resume bit-exactly and OUT/vae is a folder diffusers loads, with the measured
    # latent statistics in its config.
    from diffusers import AutoencoderKLWan

    def cfg(out):
        c = tiny_cfg(out, max_steps=3, checkpoint_every=2, val_every=0)
        c.model = VAEModelConfig(kind="wan", base_dim=4, dim_mult=(1, 1, 1), num_res_blocks=0,
                                 latent_channels=4, temporal_down=(True, False))
        c.data.frames, c.data.height, c.data.width = 5, 16, 16
        return c

    data = Squares(8, frames=5, size=16)
    full = vae_trainer.train_vae(cfg(tmp_path / "full"), data, data, show_progress=False)
    assert math.isfinite(full["val_psnr"])
    vae_trainer.train_vae(cfg(tmp_path / "half"), data, data, show_progress=False, stop_at=2)
    vae_trainer.train_vae(cfg(tmp_path / "half"), data, data, resume="latest", show_progress=False)
    a = AutoencoderKLWan.from_pretrained(tmp_path / "full" / "vae")
    b = AutoencoderKLWan.from_pretrained(tmp_path / "half" / "vae")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert a.config.latents_mean != [0.0] * 4 and len(a.config.latents_std) == 4
    with pytest.raises(ValueError, match="one temporal_down entry per level"):
        bad = cfg(tmp_path / "bad")
        bad.model.temporal_down = (True,)
        vae_trainer.train_vae(bad, data, data, show_progress=False)
    assert (a.config.scale_factor_temporal, a.config.scale_factor_spatial) == (2, 4)  # what WanPipeline reads


def test_a_residual_wan_vae_is_a_genuine_autoencoderklwan_with_shortcuts(tmp_path):
    # model.residual: diffusers' is_residual (shortcuts around the re-sampling), what the toy
    # teacher's preset uses; saved and reloaded as AutoencoderKLWan, same compression.
    from diffusers import AutoencoderKLWan

    from pyramidflow.models.vae import load_vae
    from pyramidflow.training.methods.vae import build_vae

    vae = build_vae(VAEModelConfig(kind="wan", base_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1,
                                   latent_channels=4, temporal_down=(True, True), residual=True))
    vae.save_pretrained(tmp_path / "vae")
    assert AutoencoderKLWan.from_pretrained(tmp_path / "vae").config.is_residual
    back = load_vae(tmp_path / "vae")
    with torch.no_grad():
        z = back.encode(torch.rand(1, 3, 9, 16, 16) * 2 - 1)
        assert z.shape == (1, 4, 3, 4, 4) and back.decode(z).shape == (1, 3, 9, 16, 16)


def test_tinted_clips_blend_a_share_of_clips_with_one_random_colour():
    from pyramidflow.training.vae.data import TintedClips

    class Constant(torch.utils.data.Dataset):
        def __init__(self, value):
            self.value = value

        def __len__(self):
            return 400

        def __getitem__(self, i):
            return {"video": torch.full((2, 3, 4, 4), self.value)}

    black, white = TintedClips(Constant(0.0), 0.5, seed=3), TintedClips(Constant(1.0), 0.5, seed=3)
    tinted = 0
    for i in range(len(black)):
        a = white[i] - black[i]  # a x + (1 - a) c at x = 1 minus at x = 0: the blend weight a
        assert torch.allclose(a, a.flatten()[0].expand_as(a))
        if a.flatten()[0] < 1:
            assert 0.4 <= a.flatten()[0] <= 0.9 + 1e-6
            tinted += 1
            c = black[i] / (1 - a)  # the colour, the same on every pixel and frame, in [0, 1]
            assert torch.allclose(c, c[:1, :, :1, :1].expand_as(c), atol=1e-6)
            assert 0 <= c.min() <= c.max() <= 1
        else:
            assert black[i].abs().max() == 0
    # about half: binomial(400, 0.5) has standard deviation 10, so 200 +- 50 is a 5-sigma band
    assert 150 <= tinted <= 250
    torch.testing.assert_close(black[7], TintedClips(Constant(0.0), 0.5, seed=3)[7])
    plain = TintedClips(Constant(0.3), 0.0)
    assert all(torch.equal(plain[i], torch.full((2, 3, 4, 4), 0.3)) for i in range(5))
    with pytest.raises(PyramidflowError, match="tint"):
        TintedClips(Constant(0.0), 1.5)
    # the colour's weight 1 - a drawn in tint_weight: at [1, 1] every clip is a flat colour field
    flat_black, flat_white = (TintedClips(Constant(v), 1.0, seed=1, weight=(1.0, 1.0)) for v in (0.0, 1.0))
    assert all(torch.equal(flat_black[i], flat_white[i]) for i in range(5))
    with pytest.raises(PyramidflowError, match="tint_weight"):
        TintedClips(Constant(0.0), 0.5, weight=(0.7, 0.2))
