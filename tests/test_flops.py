"""FLOP accounting: PyramidalWan Table 1 figures and PyTorch's FLOP counter on a real Wan model."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pyramidflow.errors import PyramidflowError
from pyramidflow.flops import PRESETS, WAN_VAE, TransformerSpec, forward_flops, schedule_flops, text_flops
from pyramidflow.pyramid import HaarTransform

CAUSAL = HaarTransform(temporal=True, causal_first_frame=True)
LATENT = WAN_VAE.latent_shape(81, 448, 832)

TABLE_1 = {  # PyramidalWan Table 1, Wan2.1-1.3B, TFLOPs without CFG (docs/maths.md section 8)
    (0, 0, 50): 12592,
    (20, 20, 10): 2821,
    (0, 0, 4): 1007,
    (0, 0, 2): 504,
    (2, 2, 2): 534,
    (2, 2, 1): 282,
}


def test_latent_and_token_counts():
    assert LATENT == (21, 56, 104)
    result = schedule_flops(PRESETS["wan2.1-t2v-1.3b"], LATENT, (1, 1, 1), CAUSAL)
    assert [s["tokens"] for s in result["per_stage"]] == [546, 4004, 30576]
    assert [s["latent_shape"] for s in result["per_stage"]] == [[6, 14, 26], [11, 28, 52], [21, 56, 104]]


@pytest.mark.parametrize("steps,tflops", TABLE_1.items())
def test_pyramidalwan_table_1(steps, tflops):
    result = schedule_flops(PRESETS["wan2.1-t2v-1.3b"], LATENT, steps, CAUSAL)
    assert result["total_tflops"] == pytest.approx(tflops, rel=5e-3)


def test_cfg_doubles_and_per_stage_sums():
    spec = PRESETS["wan2.1-t2v-14b"]
    one = schedule_flops(spec, LATENT, (20, 20, 10), CAUSAL)
    two = schedule_flops(spec, LATENT, (20, 20, 10), CAUSAL, cfg=True)
    assert two["total_tflops"] == pytest.approx(2 * one["total_tflops"])
    assert one["total_tflops"] == pytest.approx(sum(s["tflops"] for s in one["per_stage"]))


@pytest.mark.parametrize("shape,text_len", [((1, 4, 3, 8, 8), 7), ((1, 4, 5, 4, 12), 3)])
def test_matches_torch_flop_counter_on_a_wan_transformer(shape, text_len):
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    x = torch.randn(shape)
    text = torch.randn(1, text_len, 16)
    # The math backend spells attention as matmuls, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.tensor([500]), text)
    spec = TransformerSpec.from_config(dict(model.config), text_len=text_len)
    n_tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)
    assert forward_flops(spec, n_tokens) == counter.get_total_flops()


def test_text_share_and_the_text_cache_on_the_counter():
    """(15.2): the text's share of Wan2.1-1.3B's pass at the coarse stages of a small video, and a
    PyramidDiT with a text cache counts exactly forward_flops(cached_text=True)."""
    from pyramidflow.models import PyramidDiT

    spec = PRESETS["wan2.1-t2v-1.3b"]
    shares = [text_flops(spec) / forward_flops(spec, n) for n in (20, 80, 320)]
    assert shares == pytest.approx([0.747, 0.424, 0.153], abs=1e-3)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2)
    model = PyramidDiT(**config).eval()
    x, text = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, 16)
    with torch.no_grad():
        cache = model.build_text_cache(text)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x, torch.tensor([500.0]), None, text_cache=cache)
    small = TransformerSpec.from_config(config, text_len=7)
    assert forward_flops(small, 48, cached_text=True) == counter.get_total_flops()
    assert forward_flops(small, 48) - forward_flops(small, 48, cached_text=True) == text_flops(small)


def test_bad_input():
    with pytest.raises(PyramidflowError, match=r"1 \+ k\*4"):
        WAN_VAE.latent_shape(80, 448, 832)
    with pytest.raises(PyramidflowError, match="multiple of"):
        schedule_flops(PRESETS["wan2.1-t2v-1.3b"], (21, 58, 104), (1, 1, 1), CAUSAL)
    with pytest.raises(PyramidflowError, match="not divisible by the patch size"):
        schedule_flops(PRESETS["wan2.1-t2v-1.3b"], (21, 60, 104), (1, 1, 1), CAUSAL)
    with pytest.raises(PyramidflowError, match="lacks the key"):
        TransformerSpec.from_config({"num_layers": 2})


def test_patchification_stages_count_their_level_tokens(tmp_path, capsys):
    """PPF (docs/maths.md section 9): every stage at full resolution, stage i in level i's patches; the
    counter agrees on a PPFDiT's coarse level."""
    import json
    from dataclasses import replace

    from pyramidflow.cli import main
    from pyramidflow.models import PPFDiT
    from pyramidflow.pyramid import IdentityTransform

    spec = replace(PRESETS["wan2.1-t2v-1.3b"], ppf_patch_sizes=((1, 4, 4), (1, 2, 2)))
    result = schedule_flops(spec, LATENT, (20, 30), IdentityTransform())
    assert [s["tokens"] for s in result["per_stage"]] == [7644, 30576]
    assert [s["latent_shape"] for s in result["per_stage"]] == [[21, 56, 104]] * 2
    assert [s["patch_size"] for s in result["per_stage"]] == [[1, 4, 4], [1, 2, 2]]
    coarse = replace(spec, patch_size=(1, 4, 4), ppf_patch_sizes=None)
    assert result["total_tflops"] == pytest.approx(
        (20 * forward_flops(coarse, 7644) + 30 * forward_flops(PRESETS["wan2.1-t2v-1.3b"], 30576)) / 1e12)
    with pytest.raises(PyramidflowError, match="one level per stage at full resolution"):
        schedule_flops(spec, LATENT, (20, 30), CAUSAL)
    with pytest.raises(PyramidflowError, match="give 2 step counts"):
        schedule_flops(spec, LATENT, (20, 20, 10), IdentityTransform())
    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2)
    model = PPFDiT(**config, ppf_patch_sizes=[[1, 4, 4], [1, 2, 2]]).eval()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 4, 3, 8, 8), torch.tensor([500.0]), torch.randn(1, 7, 16), patch_level=0)
    small = TransformerSpec.from_config(dict(model.config), text_len=7)
    assert small.ppf_patch_sizes == ((1, 4, 4), (1, 2, 2))
    assert forward_flops(replace(small, patch_size=(1, 4, 4)), 12) == counter.get_total_flops()
    model.save_pretrained(tmp_path / "ppf")
    for args in (["--patches", "1x4x4,1x2x2"], ["--config", str(tmp_path / "ppf")]):
        assert main(["flops", *args, "--steps", "20-30", "--height", "448", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["pyramid"] == "patchification" and out["per_stage"][0]["patch_size"] == [1, 4, 4]
    assert main(["flops", "--patches", "1x3x4,1x2x2", "--steps", "20-30"]) == 2
    assert "not a multiple of the model's patch_size" in capsys.readouterr().err
