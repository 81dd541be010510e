"""Procedural shapes dataset: determinism, geometry, captions <-> parse_prompt, splits, collation."""

import itertools

import numpy as np
import pytest
import torch

from pyramidflow.data.shapes import ShapesDataset, render_shape, trajectory
from pyramidflow.data.vocab import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    MOVING_DIRECTIONS,
    SHAPES,
    SPEEDS,
    TEMPLATES,
    make_caption,
    parse_prompt,
)
from pyramidflow.errors import PyramidflowError


def test_items_are_deterministic_and_well_formed():
    a, b = ShapesDataset(32, 4, seed=3), ShapesDataset(32, 4, seed=3)
    other = ShapesDataset(32, 4, seed=4)
    for i in (0, 7, 9999):
        x, y = a[i], b[i]
        assert torch.equal(x["video"], y["video"]) and x["text"] == y["text"]
        assert x["video"].shape == (4, 3, 32, 32) and x["video"].dtype == torch.float32
        assert 0.0 <= float(x["video"].min()) and float(x["video"].max()) <= 1.0
        for key in ("color", "shape", "direction", "background", "positions", "speed"):
            assert key in x["meta"]
        assert x["meta"]["positions"].shape == (4, 2)
    assert any(a[i]["text"] != other[i]["text"] for i in range(5))
    with pytest.raises(IndexError):
        a[len(a)]


def test_pixels_show_the_named_colours_at_the_stated_positions():
    ds = ShapesDataset(48, 6, seed=1)
    for i in range(10):
        item = ds[i]
        meta, video = item["meta"], item["video"].numpy()
        bg, fg = np.array(BACKGROUNDS[meta["background"]]), np.array(COLORS[meta["color"]])
        assert np.allclose(video[:, :, 0, 0], bg, atol=1e-6)  # corners stay background
        for t, (x, y) in enumerate(meta["positions"]):
            assert np.allclose(video[t, :, int(y), int(x)], fg, atol=1e-6)  # the centre is the object


def test_motion_is_visible_in_four_frames_at_32_pixels_and_stays_inside():
    ds = ShapesDataset(32, 4, seed=0)
    for i in range(200):
        meta = ds.attributes(i)
        pos, r = meta["positions"], meta["radius"]
        assert (pos >= r - 1e-9).all() and (pos <= 32 - r + 1e-9).all()
        travel = pos[-1] - pos[0]
        if meta["direction"] != "still":
            assert np.linalg.norm(travel) >= 0.25 * 32  # at least a quarter of the frame
            unit = np.array(DIRECTIONS[meta["direction"]])
            assert np.dot(travel, unit) == pytest.approx(np.linalg.norm(travel))  # along the caption
    assert ds.radius * 2 >= 10  # the object spans 10+ pixels at 32x32


def test_speeds_and_still_and_bounce():
    still = ShapesDataset(32, 5, directions=["still"])
    meta = still.attributes(0)
    assert np.ptp(meta["positions"], axis=0).max() == 0 and "staying still" in still[0]["text"]
    fast = ShapesDataset(32, 9, speeds=["fast"])
    slow = ShapesDataset(32, 9, speeds=["slow"])
    free = 32 - 2 * fast.radius
    assert fast.attributes(0)["speed_px"] * 8 == pytest.approx(SPEEDS["fast"] * free)
    assert slow.attributes(0)["speed_px"] * 8 == pytest.approx(SPEEDS["slow"] * free)
    with pytest.raises(PyramidflowError, match="bounce"):
        ShapesDataset(32, 40, travel_frames=4)
    bounce = ShapesDataset(32, 40, bounce=True, travel_frames=4, directions=["right"])
    pos, r = bounce.attributes(1)["positions"], bounce.radius
    assert (pos >= r - 1e-9).all() and (pos <= 32 - r + 1e-9).all()
    assert (np.diff(pos[:, 0]) > 0).any() and (np.diff(pos[:, 0]) < 0).any()  # turned at a border


def test_trajectory_reflects_at_the_borders():
    pos = trajectory(np.array([5.0, 5.0]), np.array([3.0, 0.0]), 6, 2.0, np.array([10.0, 10.0]), True)
    assert pos[:, 0].tolist() == [5.0, 8.0, 9.0, 6.0, 3.0, 4.0]  # 11 -> 9, 14 -> 6, 17 -> 3, 20 -> 4
    assert (pos[:, 1] == 5.0).all()


def test_images_have_no_motion_words_and_any_size_works():
    ds = ShapesDataset(height=24, width=40, num_frames=1)
    item = ds[0]
    assert item["video"].shape == (1, 3, 24, 40)
    assert parse_prompt(item["text"])["direction"] is None and "moving" not in item["text"]
    assert item["meta"]["direction"] == ""


def test_aliases_used_by_the_vae_data_sources():
    ds = ShapesDataset(num_clips=5, frames=9, height=16, width=24, seed=2)
    assert len(ds) == 5 and ds[4]["video"].shape == (9, 3, 16, 24)


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_every_caption_parses_back(template):
    for color, shape, bg in itertools.product(COLORS, SHAPES, BACKGROUNDS):
        for direction in list(DIRECTIONS) + [None]:
            for speed in [*SPEEDS, None]:
                if direction in (None, "still") and speed is not None:
                    continue
                text = make_caption(color, shape, bg, direction, speed, template)
                got = parse_prompt(text)
                assert got == {"color": color, "shape": shape, "background": bg,
                               "direction": direction, "speed": speed}, text


def test_parse_prompt_is_lenient_with_hand_written_prompts():
    got = parse_prompt("A Yellow TRIANGLE moving up and to the right over a grey background!")
    assert got == {"color": "yellow", "shape": "triangle", "background": "gray",
                   "direction": "up-right", "speed": None}
    got = parse_prompt("white background with a blue square going down-left quickly")
    assert got["direction"] == "down-left" and got["speed"] == "fast" and got["background"] == "white"
    keys = ("color", "shape", "background", "direction", "speed")
    assert parse_prompt("nothing to see") == dict.fromkeys(keys)


def test_holdout_combinations_and_splits():
    rule = {"color": "red", "shape": "circle"}
    train = ShapesDataset(16, 2, seed=0, length=400, holdout=[rule])
    val = ShapesDataset(16, 2, seed=0, length=400, split="val", holdout=[rule])
    held = ShapesDataset(16, 2, seed=0, length=50, split="holdout", holdout=[rule])
    def pairs(ds):
        return {(ds.attributes(i)["color"], ds.attributes(i)["shape"]) for i in range(len(ds))}

    assert ("red", "circle") not in pairs(train) and {("red", "square"), ("blue", "circle")} <= pairs(train)
    assert ("red", "circle") not in pairs(val)
    assert pairs(held) == {("red", "circle")}
    assert [train[i]["text"] for i in range(20)] != [val[i]["text"] for i in range(20)]


def test_vocabulary_coverage_and_no_invisible_objects():
    ds = ShapesDataset(16, 2, length=3000)
    metas = [ds.attributes(i) for i in range(3000)]
    for key, vocab in (("color", COLORS), ("shape", SHAPES), ("background", BACKGROUNDS),
                       ("direction", MOVING_DIRECTIONS), ("speed", SPEEDS)):
        assert {m[key] for m in metas} == set(vocab), key
    assert all(COLORS[m["color"]] != BACKGROUNDS[m["background"]] for m in metas)


def test_render_shape_fill_ratios():
    pos = np.array([[50.0, 50.0]])
    fills = {s: render_shape(s, pos, 20.0, 100, 100).sum() / 40**2 for s in SHAPES}
    assert fills["square"] == pytest.approx(1.0, abs=0.01)
    assert fills["circle"] == pytest.approx(np.pi / 4, abs=0.01)
    assert fills["triangle"] == pytest.approx(0.5, abs=0.01)


def test_bad_arguments_name_valid_values():
    with pytest.raises(PyramidflowError, match="circle"):
        ShapesDataset(shapes=["hexagon"])
    with pytest.raises(PyramidflowError, match="train"):
        ShapesDataset(split="test")
    with pytest.raises(PyramidflowError, match="holdout"):
        ShapesDataset(holdout=[{"colour": "red"}])
    with pytest.raises(PyramidflowError, match="no attribute combination"):
        ShapesDataset(colors=["red"], holdout=[{"color": "red"}])


def test_default_collate_and_worker_loading():
    ds = ShapesDataset(16, 3, length=8, directions=["still", "left"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["video"].shape == (4, 3, 3, 16, 16)
    assert torch.equal(batches[1]["video"][0], ds[4]["video"])
    assert batches[0]["meta"]["positions"].shape == (4, 3, 2) and len(batches[0]["text"]) == 4
