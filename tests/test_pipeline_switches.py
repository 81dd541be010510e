"""The pipeline's speed and memory switches (pipelines.switches) on a CPU: attention backends,
torch.compile of the blocks, CPU offload placement (a fake GPU), VAE tiling, and the CLI flags."""

import time
from pathlib import Path

import pytest
import torch

from pyramidflow.cli import main
from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae import CausalVideoVAE
from pyramidflow.pipelines import PyramidFlowPipeline, switches
from pyramidflow.pipelines.config import PipelineConfig
from pyramidflow.pipelines.switches import Offload

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-tiny"


def generate(pipe, **kw):
    return pipe("a red circle moving left", num_frames=2, num_inference_steps=[1, 1, 1],
                first_steps=[1, 1, 1], seed=2, output_type="pt", progress=False, **kw).latents


@pytest.fixture(scope="module")
def reference():
    return generate(PyramidFlowPipeline.from_pretrained(SHIPPED))


def test_attention_backends_agree(reference):
    pipe = PyramidFlowPipeline.from_pretrained(SHIPPED).set_attention_backend("flex")
    assert pipe.transformer.config.attention_backend == "flex"
    # FlexAttention (eager on a CPU) and SDPA sum in another order: float32 rounding, 5 steps
    torch.testing.assert_close(generate(pipe), reference, rtol=1e-4, atol=1e-4)
    assert torch.equal(generate(pipe.set_attention_backend("sdpa")), reference)
    with pytest.raises(PyramidflowError, match="unknown attention backend 'flash'"):
        pipe.set_attention_backend("flash")


def test_compile_traces_every_block(reference):
    """torch.compile's graph capture (Dynamo) with the eager backend: the plumbing and the tracing of
    the block are checked without a C++ toolchain's compile time; the inductor backend is the default."""
    pipe = PyramidFlowPipeline.from_pretrained(SHIPPED).compile(backend="eager")
    assert all(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl is not None
               for b in pipe.transformer.blocks)
    torch.testing.assert_close(generate(pipe), reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(PyramidflowError, match="no repeated blocks"):
        switches.compile_transformer(torch.nn.Linear(2, 2))


def test_offload_moves_encoders_only_while_used(reference, monkeypatch):
    moves = []
    monkeypatch.setattr(switches, "move_module", lambda m, d: moves.append((type(m).__name__, str(d))))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: moves.append("empty_cache"))
    pipe = PyramidFlowPipeline.from_pretrained(SHIPPED)
    pipe.offload = Offload("cuda")  # a fake GPU: the moves are recorded, not made
    text, _ = pipe.encode_prompt(["a red circle"])
    assert moves == [("EmbeddedTextEncoder", "cuda"), ("EmbeddedTextEncoder", "cpu"), "empty_cache"]
    moves.clear()
    with pytest.raises(RuntimeError, match="boom"), pipe.offload.using(pipe.text_encoder):
        raise RuntimeError("boom")
    assert moves[1] == ("EmbeddedTextEncoder", "cpu")  # back on the CPU after an error too
    moves.clear()
    pipe.decode(torch.zeros(1, 3, 1, 32, 32))
    assert moves[:2] == [("PixelSpace", "cuda"), ("PixelSpace", "cpu")]
    assert not Offload("cpu").active
    monkeypatch.undo()
    on_cpu = PyramidFlowPipeline.from_pretrained(SHIPPED).enable_offload("cpu")
    assert torch.equal(generate(on_cpu), reference)


def test_vae_tiling_is_passed_to_decode_and_close_to_whole():
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, block_out_channels=(8, 8), spatial_down=(True, False),
                         temporal_down=(True, False), layers_per_block=1, decoder_layers_per_block=1,
                         norm_groups=2).eval()
    pipe = PyramidFlowPipeline(torch.nn.Linear(1, 1), None, vae, PipelineConfig(space="latent"))
    z = torch.randn(1, 4, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = pipe.decode(z)
    tiled = pipe.enable_vae_tiling(8).decode(z)
    assert pipe.tiling == {"tile_latent": 8, "tile_overlap": 2}
    assert torch.equal(tiled, vae.decode(z, tile_latent=8, tile_overlap=2).add(1).div(2).clamp(0, 1)
                       .permute(0, 2, 1, 3, 4))
    # random weights with frame-wide GroupNorm: seams are approximate (tests/test_vae_models.py)
    assert 0 < float((tiled - whole).norm() / whole.norm()) < 0.5
    assert torch.equal(pipe.enable_vae_tiling(16).decode(z), whole)  # one tile covers the frame: exact
    assert torch.equal(pipe.enable_vae_tiling(None).decode(z), whole)
    with pytest.raises(PyramidflowError, match="VAE tiling needs"):
        pipe.enable_vae_tiling(4, overlap=4)


def test_cli_switches(tmp_path, capsys):
    start = time.perf_counter()
    args = ["sample", "--checkpoint", str(SHIPPED), "--prompt", "a red circle", "--frames", "1",
            "--steps", "1,1,1", "--quiet", "--attention", "sdpa", "--offload", "--vae-tiling", "--dtype",
            "bf16"]
    assert main([*args, "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file() and time.perf_counter() - start < 30
    with pytest.raises(SystemExit):
        main([*args[:-6], "--attention", "flash", "--out", str(tmp_path / "y.png")])
    assert "invalid choice: 'flash'" in capsys.readouterr().err
