"""Per-stage LoRA adapters (models/lora.py): routing by stage, gradients of a multi-stage backward
pass, save/load round trip, and the errors."""

import pytest
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PyramidDiT
from pyramidflow.models.lora import (
    activate_stage,
    add_lora,
    base_copy,
    fused_copy,
    load_lora,
    save_lora,
    stage_adapters,
)
from pyramidflow.models.velocity import call_model


def tiny(seed=0):
    torch.manual_seed(seed)
    return PyramidDiT(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3,
                      out_channels=3, text_dim=8, freq_dim=16, ffn_dim=16, num_layers=1)


def randomise(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def test_each_stage_has_its_adapter_and_one_backward_trains_the_ones_used():
    model = add_lora(tiny(), 2, stages=3)
    assert stage_adapters(model) == 3
    randomise(model)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 3, 1, 4, 4, generator=g), torch.randn(1, 3, 8, generator=g)
    sigma = torch.tensor([0.4])
    outs = [call_model(model, x, sigma, text, stage=k) for k in range(3)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    (outs[0].sum() + outs[1].sum()).backward()
    grads = {k: [p.grad for n, p in model.named_parameters() if f".stage{k}." in n and "lora_A" in n]
             for k in range(3)}
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads[0] + grads[1])
    assert all(gr is None for gr in grads[2])
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    with pytest.raises(PyramidflowError, match="stage 3 has no adapter"):
        activate_stage(model, 3)


def test_per_stage_adapters_round_trip_and_do_not_fuse(tmp_path):
    model = add_lora(tiny(), 2, alpha=4, stages=2)
    randomise(model)
    save_lora(model, tmp_path / "lora")
    back = load_lora(tiny(), tmp_path / "lora")
    assert stage_adapters(back) == 2
    x, text, sigma = torch.randn(1, 3, 1, 4, 4), torch.randn(1, 3, 8), torch.tensor([0.7])
    with torch.no_grad():
        for k in range(2):
            torch.testing.assert_close(call_model(back, x, sigma, text, stage=k),
                                       call_model(model, x, sigma, text, stage=k), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(base_copy(model)(x, sigma * 1000, text).sample,
                                   tiny()(x, sigma * 1000, text).sample, rtol=0, atol=0)
    with pytest.raises(PyramidflowError, match="cannot be merged"):
        fused_copy(model)


def test_a_frozen_model_stays_frozen_and_wrappers_are_seen_through():
    model = add_lora(tiny(), 2, stages=2)
    model.requires_grad_(False)  # e.g. a teacher
    activate_stage(model, 1)
    assert list(model.active_adapters()) == ["stage1"]
    assert not any(p.requires_grad for p in model.parameters())

    class Wrapper:  # like the --parallel cfg batch splitter: calls go to .model
        def __init__(self, inner):
            self.model = inner

    wrapped = Wrapper(model)
    assert stage_adapters(wrapped) == 2
    activate_stage(wrapped, 0)
    assert list(model.active_adapters()) == ["stage0"]
