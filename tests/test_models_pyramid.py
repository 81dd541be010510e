"""Pyramid extensions of PyramidDiT: fractional positions, block causality, history cache, packing."""

import pytest
import torch
from tiny_components import TINY_DIT, seeded_randn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PyramidDiT, TokenSegment
from pyramidflow.models.attention import AttentionLayout

TINY = TINY_DIT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PyramidDiT(**TINY).eval()


_randn = seeded_randn


def _history_and_current(seed=0, batch=2):
    """Unit 0 two levels coarser, unit 1 one level coarser (clean), unit 2 the current stage."""
    h0 = TokenSegment.at_level(_randn(batch, 4, 1, 4, 4, seed=seed), 0.0, unit=0, levels_coarser=2)
    h1 = TokenSegment.at_level(_randn(batch, 4, 1, 8, 8, seed=seed + 1), 0.0, unit=1, levels_coarser=1,
                               frame_offset=1)
    cur = TokenSegment(_randn(batch, 4, 1, 16, 16, seed=seed + 2), torch.tensor([700.0, 250.0][:batch]),
                       (2.0, 0.0, 0.0), unit=2)
    return [h0, h1, cur]


def test_segment_on_the_integer_grid_is_the_plain_model(model):
    x, t, text = _randn(2, 4, 2, 8, 6), torch.tensor([900.0, 10.0]), _randn(2, 5, 16, seed=1)
    with torch.no_grad():
        plain = model(x, t, text).sample
        seg = model.forward_tokens([TokenSegment(x, t, offset=(0, 0, 0), scale=(1, 1, 1))], text)[0]
        lvl = model.forward_tokens([TokenSegment.at_level(x, t, levels_coarser=0)], text)[0]
    assert torch.equal(seg, plain) and torch.equal(lvl, plain)


def test_fractional_positions_are_relative(model):
    """RoPE sees only differences: a common fractional shift changes nothing, a stretch does."""
    x, t, text = _randn(1, 4, 2, 8, 8), torch.tensor([500.0]), _randn(1, 5, 16, seed=1)
    with torch.no_grad():
        base = model.forward_tokens([TokenSegment(x, t)], text)[0]
        shifted = model.forward_tokens([TokenSegment(x, t, offset=(0.37, 2.5, -1.25))], text)[0]
        stretched = model.forward_tokens([TokenSegment(x, t, scale=(1.0, 1.5, 1.0))], text)[0]
    assert (shifted - base).abs().max() < 1e-5
    assert (stretched - base).abs().max() > 1e-3


def test_block_causality(model):
    text = _randn(2, 5, 16, seed=9)
    segs = _history_and_current()
    changed = list(segs)
    changed[2] = TokenSegment(segs[2].latent + 1.0, segs[2].timestep, segs[2].offset, unit=2)
    changed_first = [TokenSegment(segs[0].latent * 2, 0.0, segs[0].offset, segs[0].scale, 0), *segs[1:]]
    with torch.no_grad():
        a = model.forward_tokens(segs, text)
        b = model.forward_tokens(changed, text)
        c = model.forward_tokens(changed_first, text)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # earlier units never see unit 2
    assert (a[2] - b[2]).abs().max() > 1e-3
    assert (a[2] - c[2]).abs().max() > 1e-4 and (a[1] - c[1]).abs().max() > 1e-4  # later units see unit 0


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_any_token_order_and_backend_give_the_same_result(backend):
    """Segments out of unit order need a dense mask (or FlexAttention); results equal the sorted run."""
    torch.manual_seed(0)
    model = PyramidDiT(**TINY, attention_backend=backend).eval()
    text = _randn(2, 5, 16, seed=9)
    segs = _history_and_current()
    order = [0, 2, 1]  # unit 1 sees units 0 and 1, which are not contiguous: a dense pattern
    units = torch.cat([torch.full((segs[i].latent[0, 0].numel() // 4,), segs[i].unit) for i in order])
    assert AttentionLayout(torch.zeros_like(units), units, torch.zeros_like(units), units).kind == "dense"
    with torch.no_grad():
        sorted_out = model.forward_tokens(segs, text)
        shuffled = model.forward_tokens([segs[i] for i in order], text)
    for k, i in enumerate(order):
        assert (shuffled[k] - sorted_out[i]).abs().max() < 1e-5


def test_attention_layout_plans():
    ids = torch.tensor
    full = AttentionLayout(ids([0, 0]), ids([0, 0]), ids([0, 0]), ids([0, 0]))
    groups = AttentionLayout(ids([0, 0, 0]), ids([0, 1, 1]), ids([0, 0, 0]), ids([0, 1, 1]))
    later_first = AttentionLayout(ids([0, 0, 0]), ids([1, 1, 0]), ids([0, 0, 0]), ids([1, 1, 0]))
    dense = AttentionLayout(ids([0, 0, 0]), ids([0, 1, 0]), ids([0, 0, 0]), ids([0, 1, 0]))
    assert (full.kind, groups.kind, later_first.kind, dense.kind) == ("full", "groups", "groups", "dense")
    assert groups.groups == [(0, 1, 0, 1), (1, 3, 0, 3)]
    assert later_first.groups == [(0, 2, 0, 3), (2, 3, 2, 3)]
    assert dense.dense_mask().tolist() == [[True, False, True], [True, True, True], [True, False, True]]
    with pytest.raises(PyramidflowError, match="no key"):
        AttentionLayout(ids([0]), ids([0]), ids([0]), ids([1]))


def test_history_cache_equals_recomputation(model):
    text = _randn(2, 5, 16, seed=9)
    segs = _history_and_current()
    cache = model.build_history_cache(segs[:2], text)
    assert cache.num_tokens == 4 + 16 and len(cache.keys) == TINY["num_layers"]
    for step, t in enumerate([torch.tensor([700.0, 250.0]), torch.tensor([400.0, 100.0])]):
        cur = TokenSegment(_randn(2, 4, 1, 16, 16, seed=20 + step), t, (2.0, 0.0, 0.0), unit=2)
        with torch.no_grad():
            full = model.forward_tokens([*segs[:2], cur], text)[2]
            cached = model.forward_tokens([cur], text, cache=cache)[0]
        assert (full - cached).abs().max() < 1e-5


def test_history_cache_misuse_is_rejected(model):
    text = _randn(2, 5, 16, seed=9)
    segs = _history_and_current()
    cache = model.build_history_cache(segs[:2], text)
    with pytest.raises(PyramidflowError, match="text"):
        model.forward_tokens([segs[2]], text[:, :3], cache=cache)
    same_unit = TokenSegment(segs[2].latent, segs[2].timestep, unit=1)
    with pytest.raises(PyramidflowError, match="earlier units"):
        model.forward_tokens([same_unit], text, cache=cache)


def test_packed_samples_equal_separate_runs(model):
    """Three samples at different stages (token counts), one with history, packed in one sequence."""
    s0 = [TokenSegment(_randn(1, 4, 1, 4, 4, seed=1), 900.0)]
    s1 = [TokenSegment(_randn(1, 4, 2, 8, 8, seed=2), torch.tensor([300.0]))]
    hist, _, cur = _history_and_current(seed=5, batch=1)
    s2 = [hist, cur]
    texts = [_randn(1, 5, 16, seed=10), _randn(1, 3, 16, seed=11), _randn(1, 6, 16, seed=12)]
    with torch.no_grad():
        packed = model.forward_packed([s0, s1, s2], texts)
        alone = [model.forward_tokens(s, t) for s, t in zip([s0, s1, s2], texts, strict=True)]
    for p_outs, a_outs in zip(packed, alone, strict=True):
        assert len(p_outs) == len(a_outs)
        for p, a in zip(p_outs, a_outs, strict=True):
            assert p.shape == a.shape and (p - a).abs().max() < 1e-5
    with pytest.raises(PyramidflowError, match="batch size 1"):
        model.forward_packed([_history_and_current()], [texts[0]])


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = PyramidDiT(**TINY)
    segs, text = _history_and_current(), _randn(2, 5, 16, seed=9)

    def grads():
        model.zero_grad()
        sum(o.square().mean() for o in model.forward_tokens(segs, text)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    calls, block = [], model.blocks[0]
    block_forward = block.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return block_forward(*args, **kwargs)

    block.forward = counted
    plain = grads()
    assert len(calls) == 1
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    ckpt = grads()
    assert len(calls) == 1 + 2  # the block runs again during backward: activations were not kept
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-6) for n in plain)


def test_modulation_runs_cover_tokens_without_expanding():
    from pyramidflow.models.segments import Modulation, _runs

    # a 5-token segment, three per-token entries, a 4-token segment
    assert _runs([5, 1, 1, 1, 4]) == [(0, 5, 0, 1), (5, 8, 1, 4), (8, 12, 4, 5)]
    assert _runs([1, 1, 3]) == [(0, 2, 0, 2), (2, 5, 2, 3)]
    table = torch.randn(2, 5, 1, 3)
    mod = Modulation(table, [5, 1, 1, 1, 4])
    (vec,) = mod.vectors(torch.zeros(1, 1, 3))
    x = torch.randn(2, 12, 3)
    expanded = torch.repeat_interleave(vec, torch.tensor([5, 1, 1, 1, 4]), dim=1)
    assert torch.equal(mod.apply(torch.mul, [x], [vec]), x * expanded)
    with pytest.raises(PyramidflowError, match="at least one token"):
        _runs([3, 0])


@pytest.mark.filterwarnings("ignore:Mismatch dtype")
def test_bf16_autocast_runs_close_to_float32(model):
    x, t, text = _randn(1, 4, 2, 8, 8), torch.tensor([500.0]), _randn(1, 5, 16, seed=1)
    with torch.no_grad():
        ref = model(x, t, text).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, text).sample
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() / ref.abs().max() < 0.05


def test_unit_velocity_with_cache_drives_autoregressive_generation(model):
    from pyramidflow.models.velocity import UnitVelocity
    from pyramidflow.pipelines.autoregressive import generate_units
    from pyramidflow.pyramid import HaarTransform, PyramidSchedule

    schedule, transform = PyramidSchedule(num_stages=2), HaarTransform()
    text = _randn(1, 5, 16, seed=9)
    calls = []
    original = model.build_history_cache

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.build_history_cache = counting
    try:
        videos = [generate_units(UnitVelocity(model, text, 2, use_cache=cached), schedule, transform,
                                 (1, 4, 1, 8, 8), num_units=3, steps=(2, 3),
                                 generator=torch.Generator().manual_seed(0)) for cached in (False, True)]
    finally:
        del model.build_history_cache
    assert videos[0].shape == (1, 4, 3, 8, 8)
    assert (videos[0] - videos[1]).abs().max() < 1e-4
    assert len(calls) == 2 * 2  # once per stage of units 1 and 2, not once per step


def test_coarser_segments_sit_at_block_centres():
    from pyramidflow.models.rope import grid_positions
    from pyramidflow.pyramid.temporal import block_centres

    seg = TokenSegment.at_level(torch.zeros(1, 4, 1, 6, 10), 0.0, unit=3, levels_coarser=2, frame_offset=3)
    pos = grid_positions((1, 3, 5), seg.offset, seg.scale).reshape(1, 3, 5, 3)
    assert torch.equal(pos[0, :, 0, 1], block_centres(3, 2))
    assert torch.equal(pos[0, 0, :, 2], block_centres(5, 2))
    assert (pos[..., 0] == 3).all()
