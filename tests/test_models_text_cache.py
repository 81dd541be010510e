"""The text cache: cross-attention keys/values computed once give exactly the recomputed outputs."""

import pytest
import torch
from tiny_components import TINY_DIT, seeded_randn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PyramidDiT, TokenSegment
from pyramidflow.models.velocity import LazyTextCache, UnitVelocity
from pyramidflow.pipelines.autoregressive import generate_units
from pyramidflow.pipelines.guidance import GuidedUnitVelocity, guided_velocity
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, sample

TINY = TINY_DIT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PyramidDiT(**TINY).eval()


_randn = seeded_randn


def _counting(model, calls):
    original = model.build_text_cache

    def build(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    return build


@torch.no_grad()
@pytest.mark.parametrize("per_token", [False, True])
def test_forward_with_text_cache_is_bit_identical(model, per_token):
    x, text = _randn(2, 4, 2, 8, 6), _randn(2, 7, 16, seed=1)
    t = torch.rand(2, 24, generator=torch.Generator().manual_seed(2)) * 1000 if per_token else torch.tensor(
        [900.0, 10.0])
    cache = model.build_text_cache(text)
    assert len(cache.keys) == 2 and cache.keys[0].shape == (2, 7, 2, 12) and cache.text_shape == (2, 7, 16)
    ref = model(x, t, text).sample
    assert torch.equal(model(x, t, text, text_cache=cache).sample, ref)
    assert torch.equal(model(x, t, None, text_cache=cache).sample, ref)  # the text itself is not needed


@torch.no_grad()
def test_history_cache_and_text_cache_compose(model):
    """Autoregressive step: history at coarser levels (history cache) plus the text cache, against the
    whole sequence recomputed."""
    text = _randn(2, 5, 16, seed=9)
    h0 = TokenSegment.at_level(_randn(2, 4, 1, 4, 4, seed=3), 0.0, unit=0, levels_coarser=2)
    h1 = TokenSegment.at_level(_randn(2, 4, 1, 8, 8, seed=4), 0.0, unit=1, levels_coarser=1, frame_offset=1)
    cur = TokenSegment(_randn(2, 4, 1, 16, 16, seed=5), torch.tensor([700.0, 250.0]), (2.0, 0.0, 0.0), unit=2)
    ref = model.forward_tokens([h0, h1, cur], text)[-1]
    tc = model.build_text_cache(text)
    assert torch.equal(model.forward_tokens([h0, h1, cur], text, text_cache=tc)[-1], ref)
    hist = model.build_history_cache([h0, h1], text, text_cache=tc)
    plain_hist = model.build_history_cache([h0, h1], text)
    assert all(torch.equal(a, b) for a, b in zip(hist.keys + hist.values, plain_hist.keys + plain_hist.values,
                                                 strict=True))
    out = model.forward_tokens([cur], None, cache=hist, text_cache=tc)[0]
    assert (out - ref).abs().max() < 1e-6
    assert torch.equal(out, model.forward_tokens([cur], text, cache=plain_hist)[0])


def test_guided_sampling_builds_the_cache_once_and_matches(model):
    """Full-sequence sampling with classifier-free guidance (doubled batch): same video, one cache."""
    text, null = _randn(2, 5, 16, seed=1), torch.zeros(1, 5, 16)
    schedule, transform = PyramidSchedule(3), HaarTransform()
    calls = []
    model.build_text_cache = _counting(model, calls)
    try:
        videos = [sample(guided_velocity(model, text, null, guidance=3.0, first_frame_guidance=5.0,
                                         transform=transform, cache_text=cached),
                         schedule, transform, (2, 4, 2, 16, 16), (2, 2, 2), torch.Generator().manual_seed(0))
                  for cached in (False, True)]
    finally:
        del model.build_text_cache
    assert len(calls) == 1  # once for 6 steps of the doubled batch
    assert torch.equal(videos[0], videos[1])


@pytest.mark.parametrize("guided", [False, True])
def test_autoregressive_generation_with_both_caches_matches(model, guided):
    """Units with the history cache, with and without the text cache (and under guidance)."""
    text = _randn(1, 5, 16, seed=7)
    both = torch.cat([torch.zeros_like(text), text]) if guided else text
    schedule, transform = PyramidSchedule(num_stages=2), HaarTransform()
    calls = []
    model.build_text_cache = _counting(model, calls)
    try:
        videos = []
        for cached in (False, True):
            fn = UnitVelocity(model, both, 2, use_cache=True, cache_text=cached)
            fn = GuidedUnitVelocity(fn, 4.0, 2.0) if guided else fn
            videos.append(generate_units(fn, schedule, transform, (1, 4, 1, 8, 8), num_units=3, steps=(2, 3),
                                         generator=torch.Generator().manual_seed(0)))
    finally:
        del model.build_text_cache
    assert len(calls) == 1
    assert (videos[0] - videos[1]).abs().max() < 1e-6


def test_text_cache_keeps_gradients(model):
    """Built under autograd (a differentiable rollout), the cache passes gradients to the text projections."""
    x, t, text = _randn(1, 4, 1, 4, 4), torch.tensor([300.0]), _randn(1, 3, 16, seed=1)
    grads = []
    for cached in (False, True):
        model.zero_grad()
        out = model(x, t, text, text_cache=model.build_text_cache(text) if cached else None).sample
        out.square().sum().backward()
        grads.append(model.blocks[0].attn2.to_k.weight.grad.clone())
    model.zero_grad()
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_mismatched_cache_is_an_error(model):
    text = _randn(2, 5, 16)
    cache = model.build_text_cache(text)
    x, t = _randn(1, 4, 1, 4, 4), torch.tensor([1.0])
    with pytest.raises(PyramidflowError, match="batch 2, got 1"):
        model(x, t, None, text_cache=cache)
    with pytest.raises(PyramidflowError, match="shape"):
        model(_randn(2, 4, 1, 4, 4), torch.tensor([1.0, 1.0]), _randn(2, 6, 16), text_cache=cache)
    with pytest.raises(PyramidflowError, match="text_cache"):
        model(x, t, None)
    other = PyramidDiT(**{**TINY, "num_layers": 1})
    with pytest.raises(PyramidflowError, match="layers"):
        other(_randn(2, 4, 1, 4, 4), torch.tensor([1.0, 1.0]), None, text_cache=cache)


def test_lazy_cache_serves_only_its_batch_and_cache_capable_models(model):
    from diffusers import WanTransformer3DModel

    text = _randn(2, 5, 16)
    lazy = LazyTextCache(model, text)
    assert lazy.get(1) is None and lazy.get(2) is lazy.get(2) is not None
    assert LazyTextCache(model, text, enabled=False).get(2) is None
    wan = WanTransformer3DModel(**TINY)
    assert LazyTextCache(wan, text).get(2) is None  # recomputes, as before
