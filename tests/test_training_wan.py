"""`pyramidflow train` from a diffusers Wan folder (a tiny real WanPipeline): the vae, the frozen UMT5
encoder with its sibling tokenizer and the transformer come from `wan:`; the run exports a
PyramidalWanPipeline that generates through the spatiotemporal pyramid."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from wan_folder import build_wan_pipeline

from pyramidflow.pipelines import PyramidalWanPipeline

PRESET = Path(__file__).resolve().parents[1] / "configs" / "wan2.1-t2v-1.3b-pyramidal.yaml"
TOY = ["data.source=shapes", "data.frames=17", "data.height=64", "data.width=64", "data.num_clips=8",
       "data.bounce=true", "data.fps=8.0", "text_encoder.max_length=32", "model.gradient_checkpointing=false",
       "sampling.steps=[1,1,1]", "loop.batch_size=2", "loop.log_every=1", "loop.checkpoint_every=2",
       "optim.lr=1e-3", "optim.warmup_steps=1", "num_threads=1"]


def test_train_from_a_wan_folder_and_sample_the_exported_pipeline(tmp_path):
    wan = tmp_path / "wan"
    build_wan_pipeline(seed=5).save_pretrained(wan)
    out = tmp_path / "run"
    sets = [a for item in [f"wan={wan}", *TOY] for a in ("--set", item)]
    done = subprocess.run([sys.executable, "-m", "pyramidflow", "train", "--config", str(PRESET), "--quiet",
                           *sets, "--max-steps", "2", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "checkpoint-2" / "meta.json").read_text())["extra"]["config"]
    assert meta["space"] == "latent" and meta["vae"] == str(wan / "vae")
    assert meta["text_encoder"] == {**meta["text_encoder"], "kind": "pretrained",
                                    "path": str(wan / "text_encoder")}
    assert meta["model"]["pretrained"] == str(wan / "transformer")
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "PyramidalWanPipeline"
    pipe = PyramidalWanPipeline.from_pretrained(out / "pipeline")
    assert pipe.config.pyramid.num_stages == 3 and pipe.config.frames == 17
    start = build_wan_pipeline(seed=5).transformer.state_dict()
    moved = [k for k, v in pipe.transformer.state_dict().items() if not torch.equal(v, start[k])]
    assert moved, "finetuning changed no weight"
    clip = pipe("a red circle moving right", num_inference_steps=(1, 1, 1), seed=0, output_type="pt",
                progress=False).frames
    assert clip.shape == (1, 17, 3, 64, 64) and torch.isfinite(clip).all()


def test_lora_conversion_trains_the_adapter_only_and_exports_both_formats(tmp_path):
    from diffusers import WanPipeline

    from pyramidflow.pipelines import PyramidFlowPipeline

    wan = tmp_path / "wan"
    build_wan_pipeline(seed=6).save_pretrained(wan)
    out = tmp_path / "run"
    sets = [a for item in [f"wan={wan}", *TOY, "model.lora_rank=4", "model.lora_alpha=8", "optim.lr=5e-2"]
            for a in ("--set", item)]
    args = [sys.executable, "-m", "pyramidflow", "train", "--config", str(PRESET), "--quiet", *sets,
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*args, "--max-steps", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    again = subprocess.run([*args, "--max-steps", "3", "--resume", "latest"], capture_output=True, text=True,
                           timeout=600, env=env)  # resumes the adapter from its checkpoint
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "checkpoint-3").is_dir()
    ours = PyramidalWanPipeline.from_pretrained(out / "pipeline")  # merged weights
    start = build_wan_pipeline(seed=6).transformer
    moved = [k for k, v in ours.transformer.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert moved and all(".attn" in k for k in moved)  # only the adapted projections changed
    # the adapter alone, in the file diffusers' WanPipeline loads, gives the same transformer
    pipe = WanPipeline.from_pretrained(wan)
    pipe.load_lora_weights(out / "pipeline" / "lora")
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 8, 32, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(x, t, text, return_dict=False)[0],
                                   ours.transformer(x, t, text).sample, rtol=1e-4, atol=1e-5)
    # a training checkpoint of a LoRA run samples too (base + adapter rebuilt)
    ckpt = PyramidFlowPipeline.from_pretrained(out / "checkpoint-3")
    with torch.no_grad():
        torch.testing.assert_close(ckpt.transformer(x, t, text).sample, ours.transformer(x, t, text).sample,
                                   rtol=1e-4, atol=1e-5)


def test_a_one_stage_run_on_wan_parts_exports_a_genuine_wanpipeline(tmp_path):
    # the toy teacher's recipe at toy size: AutoencoderKLWan + frozen UMT5 + a transformer trained
    # from scratch at one stage; OUT/pipeline must be a folder diffusers' WanPipeline samples
    from diffusers import WanPipeline

    from pyramidflow.pipelines import PyramidFlowPipeline

    teacher = Path(__file__).resolve().parents[1] / "configs" / "wan-teacher-shapes.yaml"
    wan = tmp_path / "parts"
    build_wan_pipeline(seed=7).save_pretrained(wan)  # its vae/ and text_encoder/ (+ tokenizer/)
    out = tmp_path / "teacher"
    sets = [f"vae={wan / 'vae'}", f"text_encoder.path={wan / 'text_encoder'}", "text_encoder.max_length=32",
            "data.num_clips=8", "loop.batch_size=2", "validation_prompts=0", "sampling.steps=[2]",
            "model.num_layers=1", "model.ffn_dim=32", "num_threads=1",
            "data.bounce=true", "data.travel_frames=8"]  # a motion scale other than the clip's: exported
    args = [sys.executable, "-m", "pyramidflow", "train", "--config", str(teacher), "--quiet",
            *[a for s in sets for a in ("--set", s)], "--max-steps", "2", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "pipeline" / "model_index.json").read_text())["_class_name"] == "WanPipeline"
    generation = json.loads((out / "pipeline" / "generation.json").read_text())
    assert (generation["num_frames"], generation["travel_frames"]) == (17, 8)  # the evaluator's motion scale
    assert PyramidFlowPipeline.from_pretrained(out / "pipeline").config.travel_frames == 8
    pipe = WanPipeline.from_pretrained(out / "pipeline")
    video = pipe("a red circle", num_frames=17, height=64, width=64, num_inference_steps=2,
                 max_sequence_length=32, output_type="pt").frames
    assert video.shape == (1, 17, 3, 64, 64) and torch.isfinite(video).all()
    ours = PyramidFlowPipeline.from_pretrained(out / "checkpoint-2")  # the trained (EMA) PyramidDiT
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 8, 32, generator=g)
    t = torch.tensor([300.0])
    with torch.no_grad():
        torch.testing.assert_close(ours.transformer(x, t, text).sample,
                                   pipe.transformer(x, t, text, return_dict=False)[0], rtol=1e-5, atol=1e-5)


def test_one_lora_adapter_per_stage_trains_saves_and_samples(tmp_path):
    # model.lora_per_stage: stage k's calls go through adapter stage{k}; the export keeps the base
    # transformer and lora/stage{k}/ in diffusers' format (one adapter each, loadable by WanPipeline).
    from diffusers import WanPipeline

    from pyramidflow.models.lora import stage_adapters
    from pyramidflow.models.velocity import call_model
    from pyramidflow.pipelines import PyramidFlowPipeline

    wan = tmp_path / "wan"
    build_wan_pipeline(seed=8).save_pretrained(wan)
    out = tmp_path / "run"
    sets = [a for item in [f"wan={wan}", *TOY, "model.lora_rank=4", "model.lora_per_stage=true",
                           "optim.lr=5e-2", "loop.batch_size=6"] for a in ("--set", item)]
    args = [sys.executable, "-m", "pyramidflow", "train", "--config", str(PRESET), "--quiet", *sets,
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*args, "--max-steps", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = PyramidalWanPipeline.from_pretrained(out / "pipeline")
    assert stage_adapters(ours.transformer) == 3
    assert sorted(p.name for p in (out / "pipeline" / "lora").iterdir()) == ["stage0", "stage1", "stage2"]
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 8, 32, generator=g)
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        per_stage = [call_model(ours.transformer, x, sigma, text, stage=k) for k in range(3)]
    assert not torch.allclose(per_stage[0], per_stage[1]) and not torch.allclose(per_stage[1], per_stage[2])
    for k in (0, 2):  # each stage's folder alone is an ordinary diffusers LoRA of that stage
        pipe = WanPipeline.from_pretrained(wan)
        pipe.load_lora_weights(out / "pipeline" / "lora" / f"stage{k}")
        with torch.no_grad():
            torch.testing.assert_close(pipe.transformer(x, torch.tensor([500.0]), text, return_dict=False)[0],
                                       per_stage[k], rtol=1e-4, atol=1e-5)
    ckpt = PyramidFlowPipeline.from_pretrained(out / "checkpoint-2")  # base + three adapters rebuilt
    with torch.no_grad():
        torch.testing.assert_close(call_model(ckpt.transformer, x, sigma, text, stage=1), per_stage[1],
                                   rtol=1e-4, atol=1e-5)
    clip = ours("a red circle moving right", num_inference_steps=(1, 1, 1), seed=0, output_type="pt",
                progress=False).frames
    assert clip.shape == (1, 17, 3, 64, 64) and torch.isfinite(clip).all()
    ours.save_pretrained(tmp_path / "again")  # a loaded pipeline saves its adapters again
    assert stage_adapters(PyramidalWanPipeline.from_pretrained(tmp_path / "again").transformer) == 3
