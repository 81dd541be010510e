"""Temporal pyramid: history levels, positions, corruption and token counts (docs/maths.md section 7-8)."""

import pytest
import torch
from stats import assert_mean

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import HaarTransform
from pyramidflow.pyramid.temporal import (
    block_centres,
    corrupt_history,
    draw_unit,
    history_levels,
    max_training_tokens,
    sequence_tokens,
    tokens_per_level,
    translate,
    unit_layout,
    unit_probabilities,
)


def test_history_levels_follow_the_reference_layout():
    # Final stage of unit 5 (K = 3): [older at 1/4, t-2 at 1/2, t-1 at full].
    assert history_levels(5, stage=2, num_stages=3) == [2, 2, 2, 1, 0]
    # Stage 0: everything at the lowest level; stage 1: t-1 at 1/2, the rest at 1/4.
    assert history_levels(4, stage=0, num_stages=3) == [2, 2, 2, 2]
    assert history_levels(4, stage=1, num_stages=3) == [2, 2, 2, 1]
    assert history_levels(0, stage=2, num_stages=3) == []
    segs = unit_layout(2, stage=2, num_stages=3)
    assert [(s.unit, s.level, s.is_history) for s in segs] == [(0, 1, True), (1, 0, True), (2, 0, False)]
    with pytest.raises(PyramidflowError, match=r"valid stages are 0\.\.2"):
        history_levels(3, stage=3, num_stages=3)


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_block_centres_are_the_mean_of_fine_positions(offset):
    fine = torch.arange(16, dtype=torch.float64).view(1, 1, 1, 1, 16).expand(1, 1, 1, 2**offset, 16)
    # Averaging fine positions over a block (the pyramid's down) gives the block's centre.
    pos = HaarTransform().down(fine.contiguous(), offset)[0, 0, 0, 0] if offset else fine[0, 0, 0, 0]
    torch.testing.assert_close(pos, block_centres(16 // 2**offset, offset), rtol=0, atol=1e-12)
    assert block_centres(4, 0).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_pyramid_flow_token_claim_at_241_frames():
    # 768p: 96x160 latents, 2x2 patches, one latent frame per unit; 241 frames -> 31 latent frames.
    per_level = tokens_per_level((96, 160), (2, 2), frames_per_unit=1, num_stages=3)
    assert per_level == [3840, 960, 240]
    assert max_training_tokens(31, per_level) == 15360  # the paper: at most 15,360 tokens
    assert 31 * per_level[0] == 119040  # full-sequence diffusion
    assert sequence_tokens(0, 0, per_level) == 240


def test_corruption_levels_and_distribution(generator):
    h = torch.randn(1, 4, 2, 2, 2, dtype=torch.float64)
    n = 20000
    out, s = corrupt_history(h.expand(n, -1, -1, -1, -1), 1 / 3, generator)
    assert s.min() >= 0 and s.max() <= 1 / 3
    se = (1 / 3) / 12**0.5 / n**0.5  # standard error of the mean of U(0, 1/3)
    assert abs(float(s.mean()) - 1 / 6) < 6 * se
    # Given s, the residual (out - (1 - s) h) / s is white noise.
    resid = (out - (1 - s.view(-1, 1, 1, 1, 1)) * h) / s.view(-1, 1, 1, 1, 1)
    assert_mean(resid, torch.zeros_like(resid[0]), 1.0)
    with pytest.raises(PyramidflowError, match="corrupt_max"):
        corrupt_history(h, 1.5)


def test_token_errors():
    with pytest.raises(PyramidflowError, match="multiples of 8"):
        tokens_per_level((12, 16), (2, 2), 1, 3)


def test_history_window_keeps_the_most_recent_units_with_absolute_indices():
    from pyramidflow.pyramid.temporal import compress_history, history_window

    assert list(history_window(5, None)) == [0, 1, 2, 3, 4]
    assert list(history_window(5, 2)) == [3, 4]
    assert list(history_window(1, 3)) == [0]
    units = [torch.full((1, 3, 1, 8, 8), float(i), dtype=torch.float64) for i in range(5)]
    t = HaarTransform()
    kept = compress_history(units, stage=2, num_stages=3, transform=t, max_history=2)
    assert [h.unit for h in kept] == [3, 4]
    assert [h.level for h in kept] == history_levels(2, 2, 3) == [1, 0]
    for h in kept:  # a window changes which units are kept, not how a unit is compressed
        assert torch.equal(h.latent, t.down(units[h.unit], h.level))
    with pytest.raises(PyramidflowError, match="max_history"):
        history_window(3, -1)


def test_variable_length_unit_weights_equal_the_clip_length_construction():
    # (7.3) against its definition: L ~ U{1..N} and each of the L units counted, i.e.
    # P(u) = sum_L [u < L] / sum_L L.
    n = 16
    p = unit_probabilities(n, "variable_length")
    by_definition = torch.tensor([sum(1.0 for L in range(1, n + 1) if u < L) for u in range(n)],
                                 dtype=torch.float64) / sum(range(1, n + 1))
    torch.testing.assert_close(p, by_definition, rtol=0, atol=1e-15)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-15)
    assert float(p[0]) == pytest.approx(16 / 136) and float(p[-1]) == pytest.approx(1 / 136)
    torch.testing.assert_close(unit_probabilities(n, "uniform"), torch.full((n,), 1 / n, dtype=torch.float64))
    with pytest.raises(PyramidflowError, match="valid: uniform, variable_length"):
        unit_probabilities(n, "harmonic")


def test_drawn_units_follow_their_probabilities(generator):
    # Monte Carlo: the mean of the one-hot draws is (7.3), each entry within its standard error.
    n, draws = 8, 20_000
    units = torch.tensor([draw_unit(n, "variable_length", generator) for _ in range(draws)])
    p = unit_probabilities(n, "variable_length")
    assert_mean(torch.nn.functional.one_hot(units, n).double(), p, (p * (1 - p)).sqrt())
    assert draw_unit(1, "variable_length", generator) == 0
    # the uniform draw is still one randint (earlier runs' draws are unchanged)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert draw_unit(n, "uniform", g1) == int(torch.randint(n, (), generator=g2))


def _blob(cy, cx, size=32, width=2.0):
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2)), yy, xx


def test_translate_moves_the_centroid_and_is_exact_for_integer_moves():
    """(7.4): integer moves shift pixels exactly (border repeated); sub-pixel moves move a smooth
    blob's centroid by the move, to bicubic interpolation's accuracy (0.05 px for a width-2 blob)."""
    g, yy, xx = _blob(14.3, 17.6)
    x = g.expand(2, 3, 2, 32, 32).clone()  # (B, C, F, H, W)
    torch.testing.assert_close(translate(x, 0.0, 0.0), x, rtol=0, atol=1e-12)
    moved = translate(x, 2.0, -1.0)
    torch.testing.assert_close(moved[..., 2:, :-1], x[..., :-2, 1:], rtol=0, atol=1e-12)
    top = x[..., :1, 1:].expand_as(moved[..., :2, :-1])  # rows moved in from outside repeat the border
    torch.testing.assert_close(moved[..., :2, :-1], top, rtol=0, atol=1e-12)
    for dy, dx in [(0.5, -0.3), (1.7, 2.2), (-0.25, 0.75)]:
        y = translate(x, dy, dx)[1, 2, 1]
        cy, cx = float((y * yy).sum() / y.sum()), float((y * xx).sum() / y.sum())
        assert abs(cy - 14.3 - dy) < 0.05 and abs(cx - 17.6 - dx) < 0.05
    with pytest.raises(PyramidflowError, match="B, C, F, H, W"):
        translate(x[0], 1.0, 1.0)
