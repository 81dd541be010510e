"""Bad values are refused (or warned about) in one line naming the problem, never accepted silently
and never a traceback: YAML, devices, seeds, prompts, guidance, sizes, steps, frames, help texts."""

import math
import re
from pathlib import Path

import pytest
import torch

from pyramidflow.cli import build_parser, main
from pyramidflow.config import SEED_MAX, check_seed, load_config
from pyramidflow.errors import PyramidflowError
from pyramidflow.pipelines import PyramidFlowPipeline
from pyramidflow.pipelines.checks import MAX_FRAMES, PromptWarning
from pyramidflow.training.config import TrainConfig
from pyramidflow.training.vae.config import VAETrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "shapes-tiny"
PRESET = ROOT / "configs" / "shapes-tiny.yaml"


def one_line(capsys, args, code=2) -> str:
    assert main(args) == code, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def pipe():
    return PyramidFlowPipeline.from_pretrained(SHIPPED)


def sample(tmp_path, *extra, steps="1,1,1"):
    return ["sample", "--checkpoint", str(SHIPPED), "--prompt", "a red circle moving left", "--frames", "1",
            f"--steps={steps}", "--out", str(tmp_path / "x.png"), "--quiet", *extra]


def test_bad_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop:\n  seed: 1\n  batch_size: [4, 8\nmodel: {}\n")
    err = one_line(capsys, ["train", "--config", str(bad)])
    assert f"{bad}: invalid YAML at line" in err
    err = one_line(capsys, ["train", "--config", str(PRESET), "--set", "optim.betas=[0.9, 0.99"])
    assert "--set optim.betas=[0.9, 0.99: invalid YAML" in err
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 8)
    assert "not a text file" in one_line(capsys, ["train", "--config", str(binary)])


def test_devices(tmp_path, capsys):
    err = one_line(capsys, sample(tmp_path, "--device", "foo"))
    assert "--device 'foo' is not a device; valid: cpu, cuda, cuda:N, mps" in err
    if not torch.cuda.is_available():
        assert "CUDA is not available" in one_line(capsys, sample(tmp_path, "--device", "cuda"))
        demo = ["demo", "--device", "cuda:3", "--out", str(tmp_path / "d")]
        assert "--device cuda:3: CUDA is not available" in one_line(capsys, demo)


def test_seeds(tmp_path, capsys):
    assert check_seed(SEED_MAX) == SEED_MAX
    for bad in (-1, SEED_MAX + 1, 1.5, True):
        with pytest.raises(PyramidflowError, match=r"from 0 to 2\*\*63 - 1"):
            check_seed(bad)
    err = one_line(capsys, sample(tmp_path, "--seed", str(10**30)))
    assert "seed must be an integer from 0 to 2**63 - 1" in err
    cfg = load_config(TrainConfig, PRESET, [f"loop.seed={10**20}"])
    with pytest.raises(PyramidflowError, match="loop.seed must be an integer"):
        cfg.check()


def test_large_training_seeds_work():
    """A seed near the top of the range no longer overflows the per-example generators."""
    from pyramidflow.training.trainer import example_generator

    big = example_generator(SEED_MAX, 10**6, 31)
    small = example_generator(3, 5, 7)
    assert torch.equal(small.get_state(), torch.Generator().manual_seed((3 * 1_000_003 + 5) * 65_537 + 7)
                       .get_state())  # unchanged where nothing wrapped
    assert big.initial_seed() < 2**64


def test_unknown_prompt_words_are_named(pipe):
    """Reproduces: out-of-vocabulary words were read as <unk> in silence (an empty video)."""
    unknown = r"unknown to this model's text encoder \(ignored\): 'purple', 'dragon'"
    with pytest.warns(PromptWarning, match=unknown) as seen:
        pipe("a purple dragon circle", num_frames=1, num_inference_steps=[1, 1, 1], progress=False)
    assert "without a known word" not in str(seen[0].message)
    with pytest.warns(PromptWarning, match="a prompt without a known word gives a video that follows no"):
        pipe(["a red circle", "zebra xylophone"], num_frames=1, num_inference_steps=[1, 1, 1], progress=False)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"guidance_scale": math.nan}, "guidance_scale must be a finite number, got nan"),
        ({"video_guidance_scale": math.inf}, "video_guidance_scale must be a finite number, got inf"),
        ({"height": 0}, "height 0 does not fit this model"),
        ({"width": -32}, "width -32 does not fit this model"),
        ({"num_inference_steps": []}, "steps has 0 entries but the schedule has 3 stages"),
        ({"first_steps": ()}, "steps has 0 entries"),
        ({"num_frames": 10**6}, f"num_frames=1000000 is more than one call generates (at most {MAX_FRAMES})"),
        ({"prompt": ["a red circle", 7]}, "prompts must be strings; prompt 1 is int 7"),
    ],
)
def test_generation_values_are_refused(pipe, kwargs, message):
    """Reproduces: nan/inf guidance gave a black video, height 0 / empty steps silently meant the
    defaults, a million frames was attempted."""
    kwargs = {"prompt": "a red circle", "num_frames": 1, **kwargs}
    with pytest.raises(PyramidflowError) as info:
        pipe(kwargs.pop("prompt"), progress=False, **kwargs)
    assert message in str(info.value)


def test_cli_generation_values(tmp_path, capsys):
    assert "--steps needs integers >= 1, got ''" in one_line(capsys, sample(tmp_path, steps=""))
    assert "height 0 does not fit" in one_line(capsys, sample(tmp_path, "--height", "0"))
    assert "guidance_scale must be a finite number" in one_line(capsys, sample(tmp_path, "--guidance", "nan"))
    assert "at most 1024" in one_line(capsys, sample(tmp_path, "--frames", "1000000"))


def test_train_vae_help_suggests_a_key_that_exists(capsys):
    """Reproduces: `train-vae --help` suggested --set optim.lr=3e-4, which the VAE config lacks."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command, cls in (("train-vae", VAETrainConfig), ("train", TrainConfig)):
        suggested = re.findall(r"e\.g\.\s+--set\s+(\S+=\S+?)[\s,)]", sub[command].format_help())
        assert len(suggested) == 2, suggested
        for item in suggested:
            load_config(cls, None, [item])  # every suggested key=value is valid for that command


def test_documented_where_users_look():
    """Reproduces: training on a latent cache was undocumented; cache-latents lacked --fps/--stride."""
    training = (ROOT / "docs" / "training.md").read_text()
    assert "data.source: latents" in training and "cache-latents" in training
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"--fps", "--stride"} <= set(sub["cache-latents"]._option_string_actions)
    assert all("--overwrite" in sub[c]._option_string_actions for c in ("train", "train-vae"))
