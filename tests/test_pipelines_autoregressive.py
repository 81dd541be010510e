"""Autoregressive unit generation: history layout per stage, caching, prefixes, reproducibility."""

import pytest
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.pipelines.autoregressive import generate_units
from pyramidflow.pyramid import HaarTransform, PyramidSchedule
from pyramidflow.pyramid.temporal import history_levels

S, T = PyramidSchedule(3), HaarTransform()
UNIT = (2, 3, 1, 16, 16)


def test_history_layout_shapes_and_calls():
    calls = []

    def velocity(x, sigma, stage, history, unit):
        calls.append((unit, stage, [(h.unit, h.level, tuple(h.latent.shape)) for h in history], id(history)))
        return torch.zeros_like(x)

    out = generate_units(velocity, S, T, UNIT, num_units=4, steps=(2, 2, 2), first_steps=(3, 3, 3))
    assert out.shape == (2, 3, 4, 16, 16)
    assert sum(1 for c in calls if c[0] == 0) == 9 and sum(1 for c in calls if c[0] == 3) == 6
    for unit, stage, hist, _ in calls:
        assert [h[0] for h in hist] == list(range(unit))
        assert [h[1] for h in hist] == history_levels(unit, stage, 3)
        for _, level, shape in hist:
            assert shape == (2, 3, 1, 16 >> level, 16 >> level)
    # One history list per (unit, stage): built once, shared by all steps of the stage.
    ids = {(u, s): set() for u, s, _, _ in calls}
    for u, s, _, i in calls:
        ids[(u, s)].add(i)
    assert all(len(v) == 1 for v in ids.values())


def test_history_is_the_clean_compressed_past():
    seen = {}

    def velocity(x, sigma, stage, history, unit):
        if unit == 2 and stage == 2:
            seen["hist"] = [h.latent.clone() for h in history]
        return -x  # a contraction, so outputs are not all zero

    out = generate_units(velocity, S, T, UNIT, 3, (2, 2, 2), generator=torch.Generator().manual_seed(0))
    past0, past1 = out[:, :, 0:1], out[:, :, 1:2]
    torch.testing.assert_close(seen["hist"][0], T.down(past0, 1))  # t-2 at half resolution
    torch.testing.assert_close(seen["hist"][1], past1)  # t-1 at full resolution


def test_prefix_units_are_kept_and_generation_is_reproducible():
    image = torch.randn(UNIT)

    def velocity(x, sigma, stage, history, unit):
        return torch.tanh(x) + (history[-1].latent.mean() if history else 0.0)

    args = (velocity, S, T, UNIT, 3, (2, 2, 2))
    a = generate_units(*args, generator=torch.Generator().manual_seed(1), prefix=[image])
    b = generate_units(*args, generator=torch.Generator().manual_seed(1), prefix=[image])
    assert torch.equal(a[:, :, :1], image) and torch.equal(a, b)
    with pytest.raises(PyramidflowError, match="expected"):
        generate_units(*args, prefix=[torch.randn(1, 3, 1, 16, 16)])
    with pytest.raises(PyramidflowError, match="num_units"):
        generate_units(velocity, S, T, UNIT, 0, (2, 2, 2))
