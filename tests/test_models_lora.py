"""LoRA on PyramidDiT in diffusers' formats: what WanPipeline.load_lora_weights reads reproduces our
adapted model; both file formats load back; rank/alpha survive; the fused copy computes the same."""

import pytest
import torch
from wan_folder import build_wan_pipeline

from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PyramidDiT
from pyramidflow.models.lora import add_lora, fused_copy, has_lora, load_lora, save_lora


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "tiny"
    build_wan_pipeline(seed=2).save_pretrained(path)
    return path


def _adapted(wan_dir):
    model = PyramidDiT.from_pretrained(wan_dir / "transformer").eval()
    add_lora(model, rank=4, alpha=16)  # scale 4: lost metadata (alpha = rank) would show
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _call(model, wan=False):
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 8, 32, generator=g)
    t = torch.tensor([600.0])
    with torch.no_grad():
        return model(x, t, text, return_dict=False)[0] if wan else model(x, t, text).sample


def test_only_the_adapter_trains_and_a_fresh_adapter_changes_nothing(wan_dir):
    base = PyramidDiT.from_pretrained(wan_dir / "transformer").eval()
    before = _call(base)
    add_lora(base, rank=2)
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".attn2.to_k." in n for n in trainable) and any(".attn1.to_out.0." in n for n in trainable)
    torch.testing.assert_close(_call(base), before)  # B = 0 at the start
    with pytest.raises(PyramidflowError, match="rank must be >= 1"):
        add_lora(PyramidDiT.from_pretrained(wan_dir / "transformer"), rank=0)


def test_pipeline_format_loads_in_diffusers_wanpipeline(wan_dir, tmp_path):
    from diffusers import WanPipeline

    model = _adapted(wan_dir)
    ours = _call(model)
    plain = _call(PyramidDiT.from_pretrained(wan_dir / "transformer").eval())
    assert not torch.allclose(ours, plain, atol=1e-3)
    save_lora(model, tmp_path / "lora")
    pipe = WanPipeline.from_pretrained(wan_dir)
    pipe.load_lora_weights(tmp_path / "lora")
    torch.testing.assert_close(_call(pipe.transformer.eval(), wan=True), ours, rtol=1e-5, atol=1e-5)
    # and back into a fresh PyramidDiT, from the pipeline format and from diffusers' model-level format
    fresh = load_lora(PyramidDiT.from_pretrained(wan_dir / "transformer").eval(), tmp_path / "lora")
    torch.testing.assert_close(_call(fresh), ours, rtol=1e-5, atol=1e-5)
    pipe.transformer.save_lora_adapter(tmp_path / "model-level", adapter_name="default_0")
    other = load_lora(PyramidDiT.from_pretrained(wan_dir / "transformer").eval(), tmp_path / "model-level")
    torch.testing.assert_close(_call(other), ours, rtol=1e-5, atol=1e-5)


def test_fused_copy_is_a_plain_model_with_the_same_output(wan_dir, tmp_path):
    model = _adapted(wan_dir)
    fused = fused_copy(model)
    assert has_lora(model) and not has_lora(fused)
    assert not any("lora_" in k for k in fused.state_dict())
    torch.testing.assert_close(_call(fused), _call(model), rtol=1e-5, atol=1e-5)
    fused.save_pretrained(tmp_path / "fused")
    torch.testing.assert_close(_call(PyramidDiT.from_pretrained(tmp_path / "fused").eval()), _call(model),
                               rtol=1e-5, atol=1e-5)


def test_loading_a_file_without_lora_weights_is_one_line(wan_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no LoRA weights"):
        load_lora(PyramidDiT.from_pretrained(wan_dir / "transformer"), tmp_path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(PyramidflowError, match="holds no LoRA weights"):
        load_lora(PyramidDiT.from_pretrained(wan_dir / "transformer"), tmp_path / "other.safetensors")
