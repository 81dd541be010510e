"""PyramidDiT against diffusers' WanTransformer3DModel: weights, config and outputs."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel

from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PyramidDiT
from pyramidflow.models.rope import grid_positions, grid_rotary, rotary_angles

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=64)


def _wan_pair(tmp_path, **overrides):
    torch.manual_seed(0)
    wan = WanTransformer3DModel(**{**TINY, **overrides}).eval()
    wan.save_pretrained(tmp_path / "wan")
    return wan, PyramidDiT.from_pretrained(tmp_path / "wan").eval()


@pytest.mark.parametrize(
    "overrides, shape, per_token",
    [
        ({}, (2, 4, 3, 8, 6), False),
        ({}, (2, 4, 3, 8, 6), True),
        ({}, (1, 4, 1, 4, 4), False),  # an image
        ({"patch_size": (2, 2, 2), "cross_attn_norm": False}, (2, 4, 4, 6, 4), True),
        ({"attention_head_dim": 16, "num_attention_heads": 3}, (3, 4, 2, 4, 8), False),
    ],
)
def test_outputs_match_wan(tmp_path, overrides, shape, per_token):
    wan, ours = _wan_pair(tmp_path, **overrides)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen)
    pt, ph, pw = ours.config.patch_size
    tokens = shape[2] // pt * (shape[3] // ph) * (shape[4] // pw)
    t_shape = (shape[0], tokens) if per_token else (shape[0],)
    t = torch.rand(t_shape, generator=gen) * 1000
    text = torch.randn(shape[0], 7, TINY["text_dim"], generator=gen)
    with torch.no_grad():
        ref = wan(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
        out = ours(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
        tup = ours(x, t, text, return_dict=False)
    assert out.shape == ref.shape == (shape[0], 4, *shape[2:])
    assert (out - ref).abs().max() < 1e-4
    assert torch.equal(tup[0], out)


def test_state_dicts_have_the_same_names_and_shapes(tmp_path):
    wan, ours = _wan_pair(tmp_path)
    ref = {k: v.shape for k, v in wan.state_dict().items()}
    got = {k: v.shape for k, v in ours.state_dict().items()}
    assert got == ref


def test_diffusers_loads_what_pyramiddit_saves(tmp_path):
    torch.manual_seed(3)
    ours = PyramidDiT(**TINY, rope_theta=10000.0, attention_backend="sdpa").eval()
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["_class_name"] == "PyramidDiT"
    assert {"rope_theta", "attention_backend"} <= set(config)  # extra keys diffusers does not know
    wan = WanTransformer3DModel.from_pretrained(tmp_path / "ours").eval()
    x, t, text = torch.randn(1, 4, 2, 4, 4), torch.tensor([300.0]), torch.randn(1, 5, 16)
    with torch.no_grad():
        assert (wan(x, t, text).sample - ours(x, t, text).sample).abs().max() < 1e-4
    back = PyramidDiT.from_pretrained(tmp_path / "ours")
    assert back.config.attention_backend == "sdpa"


def test_loading_a_wan_directory_keeps_wan_config_values(tmp_path):
    _, ours = _wan_pair(tmp_path, cross_attn_norm=False)
    saved = json.loads((tmp_path / "wan" / "config.json").read_text())
    assert saved["_class_name"] == "WanTransformer3DModel"
    assert ours.config.cross_attn_norm is False
    assert ours.config.rope_theta == 10000.0 and ours.config.attention_backend == "auto"


def test_image_to_video_configs_are_rejected(tmp_path):
    with pytest.raises(PyramidflowError, match="image_dim"):
        PyramidDiT(**TINY, image_dim=8)
    WanTransformer3DModel(**TINY, added_kv_proj_dim=8).save_pretrained(tmp_path / "i2v")
    with pytest.raises(PyramidflowError, match="added_kv_proj_dim"):
        PyramidDiT.from_pretrained(tmp_path / "i2v")
    with pytest.raises(PyramidflowError, match="attention_backend"):
        PyramidDiT(**TINY, attention_backend="cuda-magic")


def test_bad_inputs_give_clear_errors():
    model = PyramidDiT(**TINY).eval()
    text = torch.randn(1, 3, 16)
    with pytest.raises(PyramidflowError, match="divisible"):
        model(torch.randn(1, 4, 1, 5, 4), torch.tensor([1.0]), text)
    with pytest.raises(PyramidflowError, match="timestep"):
        model(torch.randn(1, 4, 1, 4, 4), torch.ones(1, 3), text)
    with pytest.raises(PyramidflowError, match="image"):
        model(torch.randn(1, 4, 1, 4, 4), torch.tensor([1.0]), text, encoder_hidden_states_image=text)


def test_integer_rotary_angles_equal_wan_table():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    head_dim, size = 12, (3, 4, 5)
    table = WanRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=16)
    cos_ref, sin_ref = table(torch.zeros(1, 1, *size))  # (1, S, 1, head_dim), pairs repeated
    cos, sin = rotary_angles(grid_positions(size), head_dim)
    assert torch.equal(cos, cos_ref[0, :, 0, 0::2]) and torch.equal(sin, sin_ref[0, :, 0, 1::2])


def test_per_axis_grid_rotary_equals_pointwise_angles():
    size, offset, scale = (2, 3, 5), (4.0, 0.75, 1.5), (1.0, 4.0, 2.0)
    cos, sin = grid_rotary(size, offset, scale, head_dim=16, theta=500.0)
    ref_cos, ref_sin = rotary_angles(grid_positions(size, offset, scale), 16, theta=500.0)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_segments_of_one_unit_equal_wan_with_per_token_timesteps(tmp_path):
    """Three segments of one unit (frames 0, 1, 2: two scalar timesteps, one per token) are the plain
    model on the whole latent with the matching per-token timestep: modulation runs are exact."""
    from pyramidflow.models import TokenSegment

    wan, ours = _wan_pair(tmp_path)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 3, 8, 6, generator=gen)
    text = torch.randn(2, 7, TINY["text_dim"], generator=gen)
    t0, t1 = torch.tensor([900.0, 30.0]), torch.tensor([450.0, 0.0])
    t2 = torch.rand(2, 12, generator=gen) * 1000
    segs = [TokenSegment(x[:, :, :1], t0), TokenSegment(x[:, :, 1:2], t1, offset=(1, 0, 0)),
            TokenSegment(x[:, :, 2:], t2, offset=(2, 0, 0))]
    per_token = torch.cat([t0[:, None].expand(2, 12), t1[:, None].expand(2, 12), t2], dim=1)
    with torch.no_grad():
        ref = wan(x, per_token, text).sample
        outs = ours.forward_tokens(segs, text)
    assert (torch.cat(outs, dim=2) - ref).abs().max() < 1e-4


def test_fast_paths_equal_reference_formulas():
    """Rotation as a complex product, the CPU RMS norm, the sigmoid form of tanh-GELU and the fused
    modulated norm against their textbook formulas (values and gradients)."""
    import torch.nn.functional as F

    from pyramidflow.models.attention import _rms_norm, _rotate_temporary
    from pyramidflow.models.embeddings import FP32LayerNorm, gelu_tanh_
    from pyramidflow.models.rope import rotate, rotation

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 10, 3, 8, generator=gen) * 3
    angles = torch.rand(1, 10, 4, generator=gen) * 20
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, :, None], sin[:, :, None]
    ref = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(-2)
    rot = rotation(cos, sin)
    assert (rotate(x, rot) - ref).abs().max() < 1e-6
    assert (_rotate_temporary(x.clone(), rot) - ref).abs().max() < 1e-6
    xg = x.clone().requires_grad_(True)
    (rotate(xg, rot) * ref).sum().backward()  # a rotation's gradient is the inverse rotation
    assert (xg.grad - rotate(ref, rotation(cos, -sin))).abs().max() < 1e-5

    norm = torch.nn.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8, generator=gen))
        h = torch.randn(3, 5, 8, generator=gen) * 4 + 1
        assert (_rms_norm(norm, h) - h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-6) * norm.weight
                ).abs().max() < 1e-5
        u = torch.linspace(-30, 30, 2001)
        assert (gelu_tanh_(u.clone()) - F.gelu(u, approximate="tanh")).abs().max() < 1e-5

    ln = FP32LayerNorm(8, 1e-6, elementwise_affine=False)
    h = torch.randn(2, 5, 8, generator=gen) * 3 + 2
    for b in (1, 2):  # batch 1: the norm's own affine; batch 2: norm then multiply-add
        scale, shift = torch.randn(b, 1, 8, generator=gen), torch.randn(b, 1, 8, generator=gen)
        plain = F.layer_norm(h[:b], (8,), eps=1e-6) * (1 + scale) + shift
        assert (ln.modulate(h[:b], scale, shift) - plain).abs().max() < 1e-5


def test_rotary_tables_built_in_inference_mode_serve_training():
    model = PyramidDiT(**TINY)
    x, t, text = torch.randn(1, 4, 1, 6, 10), torch.tensor([10.0]), torch.randn(1, 3, 16)
    with torch.inference_mode():
        model(x, t, text)  # builds (and memoises) this grid's rotation table
    model(x, t, text).sample.square().mean().backward()
    assert model.blocks[0].attn1.to_q.weight.grad is not None
