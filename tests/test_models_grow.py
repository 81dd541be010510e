"""Depth growth (docs/maths.md section 13, "Growing a trained model"): new blocks start as the
identity, so the grown model computes what the trained one did; they train; `pyramidflow train`
grows a pretrained transformer and resumes it."""

import json
from pathlib import Path

import pytest
import torch

from pyramidflow.cli import main
from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PyramidDiT
from pyramidflow.models.grow import grow_depth, new_block_slots
from pyramidflow.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2)


def _trained(seed=0, dtype=torch.float64):
    """A tiny PyramidDiT whose every weight is random (as after training: no zero output layers)."""
    torch.manual_seed(seed)
    model = PyramidDiT(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.to(dtype).eval()


def test_new_blocks_are_spread_evenly_and_never_first():
    assert new_block_slots(4, 2) == [2, 5]  # T T N T T N
    assert new_block_slots(4, 4) == [1, 3, 5, 7]  # alternating
    assert new_block_slots(2, 4) == [1, 2, 4, 5]  # T N N T N N
    assert new_block_slots(3, 1) == [3]
    assert new_block_slots(5, 0) == []
    with pytest.raises(PyramidflowError, match=">= 0"):
        new_block_slots(4, -1)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_grown_model_computes_exactly_what_the_trained_one_did(count):
    model = _trained()
    grown = grow_depth(model, count)
    assert type(grown) is PyramidDiT and grown.config.num_layers == 2 + count
    assert grown.config.ffn_dim == model.config.ffn_dim and len(grown.blocks) == 2 + count
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([731.0, 45.0], dtype=torch.float64)
    text = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = model(x, t, text, return_dict=False)[0]
        got = grown(x, t, text, return_dict=False)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # the trained blocks are copied in order, the new ones have zero output layers
    slots = new_block_slots(2, count)
    trained = [i for i in range(2 + count) if i not in slots]
    for src, dst in enumerate(trained):
        for (name, a), (_, b) in zip(model.blocks[src].state_dict().items(),
                                     grown.blocks[dst].state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    for i in slots:
        block = grown.blocks[i]
        for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
            assert not linear.weight.any() and not linear.bias.any()
        assert block.attn1.to_q.weight.abs().sum() > 0  # the rest keeps its fresh initialisation


def test_a_wrong_output_layer_would_break_the_identity():
    """The identity test above can fail: one output layer left non-zero changes the output."""
    model = _trained()
    grown = grow_depth(model, 1)
    with torch.no_grad():
        grown.blocks[new_block_slots(2, 1)[0]].ffn.net[2].bias.fill_(1e-3)
        x = torch.randn(1, 3, 1, 8, 8, dtype=torch.float64)
        t = torch.tensor([500.0], dtype=torch.float64)
        text = torch.randn(1, 3, 16, dtype=torch.float64)
        diff = grown(x, t, text, return_dict=False)[0] - model(x, t, text, return_dict=False)[0]
    assert diff.abs().max() > 1e-5


def test_new_blocks_train_from_their_output_layers():
    model = _trained(dtype=torch.float32)
    grown = grow_depth(model, 1).train()
    x = torch.randn(2, 3, 1, 8, 8)
    text = torch.randn(2, 4, 16)
    out = grown(x, torch.tensor([300.0, 800.0]), text, return_dict=False)[0]
    out.square().mean().backward()
    new = grown.blocks[new_block_slots(2, 1)[0]]
    for linear in (new.attn1.to_out[0], new.attn2.to_out[0], new.ffn.net[2]):
        assert linear.weight.grad.abs().sum() > 0
    assert not new.attn1.to_q.weight.grad.any()  # upstream of a zero layer: moves once it does
    assert grown.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0


def test_growing_needs_a_pretrained_full_model():
    with pytest.raises(PyramidflowError, match="grow_layers .* needs model.pretrained"):
        TrainConfig.from_dict({"model": {"grow_layers": 2}}).check()
    with pytest.raises(PyramidflowError, match="no lora_rank"):
        TrainConfig.from_dict({"model": {"grow_layers": 2, "pretrained": "x", "lora_rank": 4}}).check()
    with pytest.raises(PyramidflowError, match="must be >= 0"):
        TrainConfig.from_dict({"model": {"grow_layers": -1, "pretrained": "x"}}).check()


SETS = ["data.height=16", "data.width=16", "data.num_clips=16", "text_encoder.dim=16",
        "text_encoder.num_layers=1", "text_encoder.vocab_captions=200", "loop.batch_size=2",
        "checkpoint_every=1", "validation_prompts=0",
        "optim.warmup_steps=1", "temporal.mode=full_sequence", "pyramid.num_stages=2",
        "sampling.steps=[1,1]", "model.grow_layers=1", "loop.keep_last=5", "num_threads=1"]


def _train(out, base, steps, *extra, resume=None):
    args = ["train", "--config", str(ROOT / "configs" / "shapes-tiny.yaml"), "--out", str(out),
            "--max-steps", str(steps), "--quiet"]
    for item in SETS + [f"model.pretrained={base}", *extra]:
        args += ["--set", item]
    assert main(args + (["--resume", resume] if resume else [])) == 0


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next((folder / "transformer").glob("*.safetensors")))


def test_train_grows_a_pretrained_transformer_and_resumes_it(tmp_path):
    base = _trained(dtype=torch.float32)
    base.save_pretrained(tmp_path / "base")
    _train(tmp_path / "frozen", tmp_path / "base", 1, "optim.lr=0")
    want = grow_depth(base, 1).state_dict()
    got = _weights(tmp_path / "frozen" / "checkpoint-1")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    config = json.loads((tmp_path / "frozen" / "pipeline" / "transformer" / "config.json").read_text())
    assert config["num_layers"] == 3
    _train(tmp_path / "a", tmp_path / "base", 2)
    _train(tmp_path / "a", tmp_path / "base", 3, resume="latest")
    _train(tmp_path / "b", tmp_path / "base", 3)
    a, b = _weights(tmp_path / "a" / "checkpoint-3"), _weights(tmp_path / "b" / "checkpoint-3")
    assert a.keys() == want.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["blocks.2.ffn.net.2.weight"].abs().sum() > 0  # the new block has trained
