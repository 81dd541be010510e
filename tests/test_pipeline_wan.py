"""PyramidalWanPipeline on a tiny real diffusers WanPipeline folder: Wan's own sampling reproduced,
the three-stage pyramid, frame-count errors, saving and the command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from wan_folder import build_wan_pipeline

from pyramidflow.errors import PyramidflowError
from pyramidflow.pipelines import PyramidalWanPipeline, PyramidFlowPipeline


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "tiny-wan"
    pipe = build_wan_pipeline(seed=3)
    pipe.save_pretrained(path)
    (path / "generation.json").write_text(json.dumps({"height": 64, "width": 64, "num_frames": 17,
                                                       "num_inference_steps": 4, "guidance_scale": 5.0}))
    return path


def _our_grid_scheduler(shift):
    """diffusers' Euler scheduler on this project's grid: n steps from sigma 1 to 0 evenly, shifted
    (diffusers' default grid ends at sigma_min instead; the update rule is the same)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class OurGrid(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            grid = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
            super().set_timesteps(sigmas=list(grid), device=device)

    return OurGrid(shift=shift)


@torch.no_grad()
def test_one_stage_reproduces_diffusers_wanpipeline(wan_dir):
    from diffusers import WanPipeline

    ours = PyramidalWanPipeline.from_pretrained(wan_dir)  # no pyramid: Wan's own single stage
    assert ours.config.pyramid.num_stages == 1 and ours.config.pyramid.shift == 3.0
    assert (ours.config.frames, ours.config.height, ours.config.sampling.steps) == (17, 64, (4,))
    theirs = WanPipeline.from_pretrained(wan_dir)
    theirs.scheduler = _our_grid_scheduler(3.0)
    noise = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    prompt = "a red circle moving right"
    a = ours(prompt, latents=noise, output_type="pt", progress=False)
    b = theirs(prompt, latents=noise.clone(), num_frames=17, height=64, width=64, num_inference_steps=4,
               guidance_scale=5.0, output_type="latent").frames
    torch.testing.assert_close(a.latents, b, rtol=1e-4, atol=1e-5)
    frames = theirs(prompt, latents=noise.clone(), num_frames=17, height=64, width=64, num_inference_steps=4,
                    guidance_scale=5.0, output_type="pt").frames  # (1, 17, 3, 64, 64) in [0, 1]
    torch.testing.assert_close(a.frames, frames, rtol=1e-4, atol=1e-4)
    # a negative prompt is what both steer away from
    c = ours(prompt, negative_prompt="a blue square", latents=noise, output_type="pt", progress=False)
    d = theirs(prompt, negative_prompt="a blue square", latents=noise.clone(), num_frames=17, height=64,
               width=64, num_inference_steps=4, guidance_scale=5.0, output_type="latent").frames
    torch.testing.assert_close(c.latents, d, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(c.latents, a.latents, atol=1e-3)


@torch.no_grad()
def test_three_stage_pyramid_over_wan_latents(wan_dir):
    pipe = PyramidalWanPipeline.from_pretrained(wan_dir, pyramid={})
    pyr = pipe.config.pyramid
    assert (pyr.num_stages, pyr.temporal, pyr.causal_first_frame, pyr.shift) == (3, True, True, 3.0)
    assert pipe.config.sampling.steps == (20, 20, 10)
    seen = []
    kw = dict(num_inference_steps=(2, 2, 1), output_type="pt", progress=False)
    out = pipe("a green triangle", generator=torch.Generator().manual_seed(1), **kw,
               callback_on_step_end=lambda p, i, n, info: seen.append((i, n, info["stage"])))
    assert out.frames.shape == (1, 17, 3, 64, 64) and out.latents.shape == (1, 4, 5, 8, 8)
    assert [s[2] for s in seen] == [0, 0, 1, 1, 2] and all(s[1] == 5 for s in seen)
    again = pipe("a green triangle", generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(out.latents, again.latents)
    with pytest.raises(PyramidflowError, match=r"num_frames=21 does not fit .*nearest valid counts: 17, 33$"):
        pipe("x", num_frames=21, progress=False)
    with pytest.raises(PyramidflowError, match=r"num_frames=16 does not fit .*1 \+ 4k video frames"):
        pipe("x", num_frames=16, progress=False)


@torch.no_grad()
def test_save_and_load_back(wan_dir, tmp_path):
    pipe = PyramidalWanPipeline.from_pretrained(wan_dir, pyramid={"num_stages": 2})
    saved = pipe.save_pretrained(tmp_path / "pyramidal")
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "PyramidalWanPipeline" and index["config"]["pyramid"]["num_stages"] == 2
    back = PyramidalWanPipeline.from_pretrained(saved)
    assert back.config == pipe.config
    kw = dict(num_inference_steps=(2, 1), seed=4, output_type="pt", progress=False)
    torch.testing.assert_close(back("a blue square", **kw).latents, pipe("a blue square", **kw).latents)
    generic = PyramidFlowPipeline.from_pretrained(saved)  # what the command line loads
    assert generic.config == pipe.config


def test_sample_command_on_a_wan_folder(wan_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    run = subprocess.run([sys.executable, "-m", "pyramidflow", "sample", "--checkpoint", str(wan_dir),
                          "--prompt", "a yellow circle", "--steps", "2", "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "17 frames, 64x64" in run.stdout and out.stat().st_size > 0


def test_flops_command_reads_a_pipeline_folder(wan_dir, capsys):
    from pyramidflow.cli import main

    assert main(["flops", "--config", str(wan_dir), "--frames", "17", "--height", "64", "--width", "64",
                 "--steps", "2-2-1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # latents 2x2x2 / 3x4x4 / 5x8x8, patches 1x2x2
    assert [s["tokens"] for s in result["per_stage"]] == [2, 12, 80]
    assert result["spec"]["num_layers"] == 2


def test_flops_command_uses_the_folders_own_vae_compression(wan_dir, tmp_path, capsys):
    """A pipeline whose VAE compresses 4x spatially (the toy teacher's) has 4x the latent pixels."""
    import shutil

    from pyramidflow.cli import main

    folder = tmp_path / "x4"
    shutil.copytree(wan_dir, folder)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert (vae["scale_factor_temporal"], vae["scale_factor_spatial"]) == (4, 8)
    (folder / "vae" / "config.json").write_text(json.dumps({**vae, "scale_factor_spatial": 4}))
    assert main(["flops", "--config", str(folder), "--frames", "17", "--height", "64", "--width", "64",
                 "--steps", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["latent_shape"] == [5, 16, 16] and result["per_stage"][0]["tokens"] == 5 * 8 * 8


@torch.no_grad()
def test_a_one_stage_model_exports_as_a_genuine_wanpipeline(wan_dir, tmp_path):
    from diffusers import WanPipeline

    ours = PyramidalWanPipeline.from_pretrained(wan_dir)
    out = ours.export_wan_pipeline(tmp_path / "exported")
    assert json.loads((out / "generation.json").read_text()) == {
        "height": 64, "width": 64, "num_frames": 17, "num_inference_steps": 4, "guidance_scale": 5.0}
    original, exported = WanPipeline.from_pretrained(wan_dir), WanPipeline.from_pretrained(out)
    noise = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(2))
    kw = dict(num_frames=17, height=64, width=64, num_inference_steps=3, guidance_scale=5.0,
              output_type="latent")
    torch.testing.assert_close(exported("a blue square", latents=noise.clone(), **kw).frames,
                               original("a blue square", latents=noise.clone(), **kw).frames)
    with pytest.raises(PyramidflowError, match="samples one full-resolution stage; this model has 3"):
        PyramidalWanPipeline.from_pretrained(wan_dir, pyramid={}).export_wan_pipeline(tmp_path / "no")


def test_flops_command_defaults_to_what_a_pyramidal_folder_was_saved_for(tmp_path, capsys):
    """A pyramidal pipeline folder's size, steps per stage and guidance are the defaults; flags win."""
    import shutil

    from pyramidflow.cli import main

    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "wan-pyramidal-shapes"
    assert main(["flops", "--config", str(shipped), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["video"] == [17, 32, 32] and result["steps"] == [20, 20, 10] and result["cfg"]
    assert [s["tokens"] for s in result["per_stage"]] == [2, 12, 80]
    few = tmp_path / "few"
    shutil.copytree(shipped, few)
    index = json.loads((few / "model_index.json").read_text())
    index["config"]["sampling"].update(steps=[2, 2, 1], guidance=1.0, step_rule="x0_renoise")
    (few / "model_index.json").write_text(json.dumps(index))
    assert main(["flops", "--config", str(few), "--json"]) == 0
    fewer = json.loads(capsys.readouterr().out)
    assert fewer["steps"] == [2, 2, 1] and not fewer["cfg"]
    per_step = [s["tflops"] / s["steps"] for s in result["per_stage"]]
    halved = [n * f / 2 for n, f in zip((2, 2, 1), per_step, strict=True)]  # one pass, not two, per step
    assert fewer["total_tflops"] == pytest.approx(sum(halved))
    assert main(["flops", "--config", str(few), "--steps", "4-4-2", "--cfg", "--frames", "33", "--json"]) == 0
    flagged = json.loads(capsys.readouterr().out)
    assert flagged["steps"] == [4, 4, 2] and flagged["cfg"] and flagged["video"] == [33, 32, 32]
