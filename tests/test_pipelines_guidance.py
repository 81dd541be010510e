"""Classifier-free guidance velocity around a Wan transformer, driven by the pyramid sampler."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from pyramidflow.errors import PyramidflowError
from pyramidflow.pipelines.guidance import frame_scales, guided_velocity
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, sample


@pytest.fixture(scope="module")
def wan():
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
        text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    ).eval()


def _plain(model, x, sigma, text):
    with torch.no_grad():
        return model(hidden_states=x, timestep=1000 * sigma, encoder_hidden_states=text, return_dict=False)[0]


def test_guidance_formula_per_frame(wan):
    x = torch.randn(2, 3, 3, 8, 8)
    sigma = torch.tensor([0.7, 0.7])
    text, null = torch.randn(2, 4, 8), torch.zeros(1, 4, 8)
    fn = guided_velocity(wan, text, null, guidance=5.0, first_frame_guidance=7.0)
    with torch.no_grad():
        v = fn(x, sigma, 0)
    v_c, v_u = _plain(wan, x, sigma, text), _plain(wan, x, sigma, null.expand(2, -1, -1))
    expect = v_u + frame_scales(3, 7.0, 5.0, HaarTransform()) * (v_c - v_u)
    torch.testing.assert_close(v, expect, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(v[:, :, 0], (v_u + 5.0 * (v_c - v_u))[:, :, 0])  # frame 0 used 7


def test_scale_one_is_the_conditional_model(wan):
    x, sigma, text = torch.randn(1, 3, 1, 8, 8), torch.tensor([0.3]), torch.randn(1, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(guided_velocity(wan, text)(x, sigma, 1), _plain(wan, x, sigma, text))


def test_guided_pyramid_sampling_runs_and_is_reproducible(wan):
    text, null = torch.randn(2, 4, 8), torch.zeros(1, 4, 8)
    fn = guided_velocity(wan, text, null, guidance=3.0)
    args = (fn, PyramidSchedule(3), HaarTransform(), (2, 3, 2, 16, 16), (2, 2, 2))
    a = sample(*args, generator=torch.Generator().manual_seed(1))
    b = sample(*args, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 2, 16, 16) and torch.isfinite(a).all() and torch.equal(a, b)


def test_errors(wan):
    with pytest.raises(PyramidflowError, match="needs null_text"):
        guided_velocity(wan, torch.randn(1, 4, 8), guidance=2.0)
    with pytest.raises(PyramidflowError, match="does not match"):
        guided_velocity(wan, torch.randn(2, 4, 8), torch.zeros(2, 5, 8), guidance=2.0)
    # A spatiotemporal pyramid merges frame 0 with frame 1, so no separate first-frame scale.
    assert frame_scales(2, 7.0, 5.0, HaarTransform(temporal=True)).flatten().tolist() == [5.0, 5.0]
