"""The trainer and the pipeline in a VAE's latent space: from pixels, and from a latent cache."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pyramidflow.cli import main
from pyramidflow.data.shapes import ShapesDataset
from pyramidflow.models.vae import CausalVideoVAE
from pyramidflow.pipelines import PyramidFlowPipeline
from pyramidflow.training.vae.cache import build_latent_cache

PRESET = Path(__file__).resolve().parents[1] / "configs" / "shapes-tiny.yaml"
TINY = [
    "data.frames=5", "data.height=16", "data.width=16", "data.num_clips=32", "model.num_layers=1",
    "model.attention_head_dim=8", "model.num_attention_heads=2", "model.ffn_dim=32", "model.freq_dim=16",
    "model.patch_size=[1,2,2]", "pyramid.num_stages=2", "sampling.steps=[2,2]", "text_encoder.dim=16",
    "text_encoder.num_layers=1", "text_encoder.vocab_captions=100", "loop.batch_size=4", "validate_every=2",
    "validation_prompts=2", "optim.warmup_steps=1", "space=latent",
]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, block_out_channels=(8, 8), spatial_down=(True, False),
                         temporal_down=(True, False), layers_per_block=1, decoder_layers_per_block=1,
                         norm_groups=2)
    vae.set_latent_stats([0.1, -0.1, 0.0, 0.2], [1.5, 0.5, 1.0, 2.0])
    path = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(path)
    return path


def train(out, *extra):
    args = ["train", "--config", str(PRESET), "--out", str(out), "--max-steps", "2", "--quiet"]
    for item in TINY + list(extra):
        args += ["--set", item]
    assert main(args) == 0


def test_latent_space_training_and_generation(vae_dir, tmp_path):
    train(tmp_path / "run", f"vae={vae_dir}")
    samples = tmp_path / "run" / "samples" / "step-0000002"
    assert (samples / "00.mp4").is_file() and (samples / "metrics.json").is_file()
    pipe = PyramidFlowPipeline.from_pretrained(tmp_path / "run")
    assert pipe.vae is not None and pipe.transformer.config.in_channels == 4
    out = pipe("a red circle moving left on a black background", progress=False)
    assert out.frames.shape == (1, 5, 16, 16, 3) and out.latents.shape == (1, 4, 3, 8, 8)
    assert pipe("a red circle", num_frames=1, progress=False).frames.shape == (1, 1, 16, 16, 3)
    fits = r"num_frames=4 does not fit this model \(1 \+ 2k video frames\); nearest valid counts: 3, 5$"
    with pytest.raises(ValueError, match=fits):
        pipe("a red circle", num_frames=4, progress=False)
    # image-to-video: the first latent unit is the encoded image
    image = torch.randint(0, 256, (3, 16, 16), generator=torch.Generator().manual_seed(0)).float() / 255
    video = pipe("a red circle", image=image, progress=False, output_type="pt")
    first = pipe.vae.encode(image.mul(2).sub(1)[None, :, None])
    torch.testing.assert_close(video.latents[:, :, :1], first, rtol=1e-5, atol=1e-5)
    # the saved pipeline carries its VAE
    pipe.save_pretrained(tmp_path / "saved")
    again = PyramidFlowPipeline.from_pretrained(tmp_path / "saved")
    a = pipe("a blue square", seed=1, progress=False).frames
    assert np.array_equal(a, again("a blue square", seed=1, progress=False).frames)


def test_training_reads_a_latent_cache(vae_dir, tmp_path):
    from pyramidflow.models.vae import load_vae

    vae = load_vae(vae_dir)
    clips = ShapesDataset(size=16, num_frames=5, length=8, seed=3)
    build_latent_cache(clips, vae, tmp_path / "cache", shard_size=4, show_progress=False)
    train(tmp_path / "run", f"vae={vae_dir}", "data.source=latents", f"data.path={tmp_path / 'cache'}")
    assert (tmp_path / "run" / "checkpoint-2" / "meta.json").is_file()
    assert (tmp_path / "run" / "samples" / "step-0000002" / "metrics.json").is_file()
    other = CausalVideoVAE(latent_channels=4, block_out_channels=(8, 8), spatial_down=(True, False),
                           temporal_down=(True, False), layers_per_block=1, decoder_layers_per_block=1,
                           norm_groups=2)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="set vae: to the folder the cache was encoded with"):
        from pyramidflow.config import load_config
        from pyramidflow.training.build import build_components
        from pyramidflow.training.config import TrainConfig

        cfg = load_config(TrainConfig, PRESET, TINY + [f"vae={tmp_path / 'other'}", "data.source=latents",
                                                       f"data.path={tmp_path / 'cache'}"])
        build_components(cfg)


def test_latent_training_without_a_trained_vae_says_how_to_make_one(tmp_path, capsys):
    args = ["train", "--config", str(PRESET), "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet"]
    for item in [*TINY, f"vae={tmp_path / 'missing'}"]:
        args += ["--set", item]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "no VAE config.json" in err
    assert "pyramidflow train-vae --config configs/vae-shapes-tiny.yaml" in err
