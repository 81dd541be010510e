"""End to end: `pyramidflow train` -> checkpoints, resume, the pipeline (t2v, t2i, i2v), sample, demo."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pyramidflow.cli import main
from pyramidflow.pipelines import PyramidFlowPipeline
from pyramidflow.pipelines.guidance import GuidedUnitVelocity
from pyramidflow.pyramid.temporal import HistoryUnit

PRESET = Path(__file__).resolve().parents[1] / "configs" / "shapes-tiny.yaml"
TINY = [
    "data.height=16", "data.width=16", "data.num_clips=64", "model.num_layers=1",
    "model.attention_head_dim=8", "model.num_attention_heads=2", "model.ffn_dim=32", "model.freq_dim=16",
    "text_encoder.dim=16",
    "text_encoder.num_layers=1", "text_encoder.vocab_captions=200", "loop.batch_size=4",
    "checkpoint_every=2", "validate_every=4", "validation_prompts=2", "sampling.steps=[2,2,2]",
    "optim.warmup_steps=2", "loop.keep_last=3",
]


def train(out, steps, *extra, resume=None):
    args = ["train", "--config", str(PRESET), "--out", str(out), "--max-steps", str(steps), "--quiet"]
    for item in TINY + list(extra):
        args += ["--set", item]
    if resume:
        args += ["--resume", resume]
    assert main(args) == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(out, 4)
    return out


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {f"{sub}.{k}": v for sub in ("transformer", "ema_transformer", "text_encoder")
            for k, v in load_file(next((folder / sub).glob("*.safetensors"))).items()}


def test_train_writes_checkpoints_samples_and_pipeline(run_dir):
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    ckpt = run_dir / "checkpoint-4"
    for name in ("transformer", "ema_transformer", "text_encoder", "ema_text_encoder"):
        assert (ckpt / name / "config.json").is_file(), name
    assert (ckpt / "text_encoder" / "vocab.json").is_file()
    names = {p.name for p in ckpt.iterdir()}
    assert {"optimizer_main.pt", "scheduler_main.pt", "rng.pt", "meta.json"} <= names
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 4 and meta["extra"]["config"]["temporal"]["mode"] == "autoregressive"
    samples = run_dir / "samples" / "step-0000004"
    assert {"00.mp4", "00.txt", "01.mp4", "sheet.png", "metrics.json"} <= {p.name for p in samples.iterdir()}
    scores = json.loads((samples / "metrics.json").read_text())
    assert {"color", "shape", "direction", "frechet"} <= set(scores)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val/color" in r] == [4]  # one validation, at the end
    assert [r["step"] for r in records if "loss" in r] == [4]  # training logs (log_every 20: the last step)
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))
    assert (run_dir / "pipeline" / "model_index.json").is_file()


def test_cli_resume_is_bit_exact(run_dir, tmp_path):
    train(tmp_path, 2)
    train(tmp_path, 4, resume="latest")
    a, b = _weights(run_dir / "checkpoint-4"), _weights(tmp_path / "checkpoint-4")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pipeline_layouts_seeds_and_modes(run_dir, tmp_path):
    pipe = PyramidFlowPipeline.from_pretrained(run_dir / "pipeline")
    prompts = ["a red circle moving left on a black background",
               "a blue square moving up on a white background"]
    a = pipe(prompts, seed=3, progress=False).frames
    assert a.shape == (2, 4, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, pipe(prompts, seed=3, progress=False).frames)
    assert not np.array_equal(a, pipe(prompts, seed=4, progress=False).frames)
    # a training checkpoint loads its EMA weights by default, which the exported pipeline holds
    from_ckpt = PyramidFlowPipeline.from_pretrained(run_dir / "checkpoint-4")
    assert np.array_equal(a, from_ckpt(prompts, seed=3, progress=False).frames)
    raw = PyramidFlowPipeline.from_pretrained(run_dir, use_ema=False)  # the output folder: newest checkpoint
    assert not np.array_equal(a, raw(prompts, seed=3, progress=False).frames)
    # text-to-image, longer videos, the history cache
    assert pipe(prompts[0], num_frames=1, progress=False).frames.shape == (1, 1, 16, 16, 3)
    long = pipe(prompts[0], num_frames=6, progress=False, output_type="pt")
    assert long.frames.shape == (1, 6, 3, 16, 16)
    assert 0 <= float(long.frames.min()) <= float(long.frames.max()) <= 1
    nocache = pipe(prompts[0], num_frames=6, progress=False, output_type="pt", use_cache=False)
    torch.testing.assert_close(long.latents, nocache.latents, rtol=1e-4, atol=1e-4)
    # save / load round trip, and half-size weights
    pipe.save_pretrained(tmp_path / "p32")
    again = PyramidFlowPipeline.from_pretrained(tmp_path / "p32")
    assert np.array_equal(a, again(prompts, seed=3, progress=False).frames)
    pipe.save_pretrained(tmp_path / "p16", weights_dtype=torch.float16)
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "p16") < 0.6 * size(tmp_path / "p32")
    half = PyramidFlowPipeline.from_pretrained(tmp_path / "p16")
    assert half.dtype == torch.float32
    close = half(prompts, seed=3, progress=False, output_type="pt").frames
    far = pipe(prompts, seed=3, progress=False, output_type="pt").frames
    assert float((close - far).abs().max()) < 0.05


def test_image_to_video_keeps_the_given_first_frame(run_dir, tmp_path):
    from PIL import Image

    pipe = PyramidFlowPipeline.from_pretrained(run_dir / "pipeline")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # resized and centre-cropped to 16x16
    Image.fromarray(image).save(tmp_path / "first.png")
    out = pipe("a green triangle moving right on a gray background", image=tmp_path / "first.png",
               progress=False).frames[0]
    expected = np.asarray(Image.fromarray(image).resize((27, 16), Image.Resampling.BICUBIC))[:, 5:21]
    assert out.shape == (4, 16, 16, 3)
    assert np.abs(out[0].astype(int) - expected.astype(int)).max() <= 1
    assert not np.array_equal(out[1], out[0])


def test_guided_unit_velocity_formula():
    calls = []

    def inner(x, sigma, stage, history, unit):
        calls.append(history)
        half = x.shape[0] // 2
        return torch.cat([torch.full_like(x[:half], 1.0), torch.full_like(x[half:], 3.0)])

    guided = GuidedUnitVelocity(inner, first=2.0, rest=5.0)
    x, sigma = torch.zeros(2, 3, 1, 4, 4), torch.ones(2)
    history = [HistoryUnit(torch.zeros(2, 3, 1, 4, 4), 0, 0)]
    assert float(guided(x, sigma, 0, history, 0).mean()) == 1 + 2 * (3 - 1)
    assert float(guided(x, sigma, 0, history, 1).mean()) == 1 + 5 * (3 - 1)
    assert calls[0] is calls[1] and calls[0][0].latent.shape[0] == 4  # doubled once, reused


def test_full_sequence_model_and_input_errors(tmp_path):
    train(tmp_path, 1, "temporal.mode=full_sequence", "temporal.frames_per_unit=2", "validation_prompts=0")
    pipe = PyramidFlowPipeline.from_pretrained(tmp_path)
    assert pipe("a red circle", num_frames=4, progress=False).frames.shape == (1, 4, 16, 16, 3)
    with pytest.raises(ValueError, match="needs an autoregressive model"):
        pipe("a red circle", image=torch.zeros(3, 16, 16), progress=False)
    pipe.config.temporal.mode = "autoregressive"  # units of 2 frames: 3 frames do not fit
    fits = (r"num_frames=3 does not fit this model "
            r"\(model frames a multiple of 2\); nearest valid counts: 2, 4$")
    with pytest.raises(ValueError, match=fits):
        pipe("a red circle", num_frames=3, progress=False)
    with pytest.raises(ValueError, match="multiple of 16"):
        pipe("a red circle", height=24, progress=False)


def test_cli_errors_are_one_line(run_dir, tmp_path, capsys):
    cases = [
        (["train", "--config", str(PRESET), "--set", "optim.lrr=1"], "unknown config key optim.lrr"),
        (["train", "--config", str(PRESET), "--set", "nosuch=1"], "unknown config key nosuch"),
        (["sample", "--checkpoint", str(tmp_path / "nothing"), "--prompt", "x", "--out", "a.mp4"],
         "checkpoint not found"),
        (["sample", "--checkpoint", str(tmp_path), "--prompt", "x", "--out", "a.mp4"], "is not a pipeline"),
        (["sample", "--checkpoint", str(run_dir), "--prompt", "x", "--frames", "0", "--out", "a.mp4"],
         "num_frames must be >= 1"),
    ]
    bad_image = tmp_path / "not-an-image.png"
    bad_image.write_text("hello")
    cases.append((["sample", "--checkpoint", str(run_dir), "--prompt", "x", "--image", str(bad_image),
                   "--out", str(tmp_path / "a.mp4")], "cannot read image"))
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "checkpoint-4", broken)
    for f in (broken / "ema_transformer").glob("*.safetensors"):
        f.unlink()
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    cases.append((["sample", "--checkpoint", str(broken), "--prompt", "x", "--out", "a.mp4"],
                  "incomplete checkpoint"))
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_sample_and_demo_commands(run_dir, tmp_path):
    assert main(["sample", "--checkpoint", str(run_dir / "pipeline"), "--prompt", "a red circle moving left",
                 "--steps", "2,2,2", "--out", str(tmp_path / "v.mp4"), "--quiet"]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0
    assert main(["sample", "--checkpoint", str(run_dir / "pipeline"), "--prompt", "a red circle",
                 "--frames", "1", "--out", str(tmp_path / "i.png"), "--quiet"]) == 0
    out = tmp_path / "demo"
    assert main(["demo", "--checkpoint", str(run_dir / "pipeline"), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 32 and len(list((out / "clips").glob("*.mp4"))) == 32
    assert {"color", "shape", "direction", "background"} <= set(metrics["accuracy"])
    assert metrics["frechet"] > 0 and (out / "sheet.png").is_file()
    # the demo folder is what `pyramidflow eval` reads
    assert main(["eval", "--videos", str(out / "clips"), "--json"]) == 0


def test_demo_retrains_from_a_preset_with_overrides(tmp_path):
    sets = [a for item in TINY for a in ("--set", item)]
    out = tmp_path / "demo"
    assert main(["demo", "--train", "--train-steps", "2", "--config", str(PRESET), *sets, "--out", str(out),
                 "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 2 and metrics["train_seconds"] > 0 and metrics["count"] == 32
    pipe = PyramidFlowPipeline.from_pretrained(out / "model" / "pipeline")
    assert pipe.config.height == 16 and pipe.transformer.config.num_layers == 1  # the overrides applied


def test_demo_prompts_cover_the_vocabulary():
    from pyramidflow.data.vocab import BACKGROUNDS, COLORS, MOVING_DIRECTIONS, SHAPES, SPEEDS, parse_prompt
    from pyramidflow.demo import demo_prompts

    prompts = demo_prompts()
    assert len(prompts) == 32 == len(set(prompts))
    asked = [parse_prompt(p) for p in prompts]
    for key, vocab in (("color", COLORS), ("shape", SHAPES), ("direction", MOVING_DIRECTIONS),
                       ("speed", SPEEDS), ("background", BACKGROUNDS)):
        assert {a[key] for a in asked} == set(vocab), key
    # every colour comes with every shape: the demo can tell shape-follows-prompt from colour-to-shape
    pairs = {(a["color"], a["shape"]) for a in asked}
    assert pairs == {(c, s) for c in COLORS for s in SHAPES}
