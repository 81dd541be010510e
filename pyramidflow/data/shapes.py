"""Built-in procedural dataset: captioned videos of one moving shape on a solid background.

Item ``i`` of a split is a pure function of ``(seed, split, i)``: its attributes (colour, shape,
direction, speed, background, caption template) are drawn uniformly from the allowed combinations
and its start position uniformly from the positions that keep the whole path inside the frame
(with ``bounce=True``: that keep its first ``travel_frames`` steps inside, so the caption's
direction holds for them as in a clip of ``travel_frames + 1`` frames; later the shape reflects off
the borders). Frames are drawn
all at once with numpy from anti-aliased signed distances, so a 16x64x64 clip takes well under a
millisecond per frame (``bench/bench_data.py``).

Geometry (pixels, x right, y down): the shape's bounding box has side ``2 r`` with
``r = object_scale * min(H, W) / 2``; ``positions[t]`` is the box centre. A moving shape covers
``SPEEDS[speed]`` of the free range ``min(H, W) - 2 r`` in ``travel_frames`` frames (default: the
clip, ``T - 1``), i.e. ``speed_px = SPEEDS[speed] * (min(H, W) - 2 r) / travel_frames`` pixels per
frame. Fewer travel frames than the clip need ``bounce=True``.

Maths: docs/maths.md section 19.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from pyramidflow.data.vocab import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    MOVING_DIRECTIONS,
    SHAPES,
    SPEEDS,
    TEMPLATES,
    make_caption,
)
from pyramidflow.errors import PyramidflowError

ATTRIBUTES = ("color", "shape", "direction", "speed", "background")
SPLITS = {"train": 0, "val": 1, "holdout": 2}


def _check_subset(name: str, chosen: Iterable[str] | None, valid: Iterable[str]) -> tuple[str, ...]:
    valid = tuple(valid)
    chosen = valid if chosen is None else tuple(chosen)
    bad = [c for c in chosen if c not in valid]
    if bad or not chosen:
        raise PyramidflowError(f"invalid {name} {bad or '(none)'}; valid: {', '.join(valid)}")
    return chosen


def _matches(combo: Mapping[str, str], rule: Mapping[str, str]) -> bool:
    return all(combo.get(k) == v for k, v in rule.items())


def render_shape(
    shape: str, positions: np.ndarray, radius: float, height: int, width: int
) -> np.ndarray:
    """Anti-aliased coverage (T, H, W) in [0, 1] of ``shape`` centred at ``positions`` (T, 2) = (x, y).

    Coverage is ``clip(0.5 - d, 0, 1)`` of a signed distance ``d`` (pixels, negative inside):
    exact for the circle and square, the max of the three edge distances for the triangle
    (apex up, base at the bottom of the box).
    """
    if shape not in SHAPES:
        raise PyramidflowError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    x = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]
    y = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]
    dx = x - positions[:, 0, None, None].astype(np.float32)  # (T, 1, W)
    dy = y - positions[:, 1, None, None].astype(np.float32)  # (T, H, 1)
    r = np.float32(radius)
    if shape == "circle":
        d = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) - r
    else:  # triangle (-r, r), (r, r), (0, -r): base edge y = r, sides with normals (+-2, -1)/sqrt(5)
        s = np.float32(1 / np.sqrt(5.0))
        side = (2 * np.abs(dx) - dy - r) * s  # distance to the nearer slanted side
        d = np.maximum(side, dy - r)
    return np.clip(0.5 - d, 0.0, 1.0)  # (T, H, W)


def trajectory(
    start: np.ndarray, velocity: np.ndarray, frames: int, low: float, high: np.ndarray, bounce: bool
) -> np.ndarray:
    """Positions (T, 2) from ``start`` (2,) moving ``velocity`` px/frame; reflected into [low, high]."""
    pos = start[None, :] + np.arange(frames, dtype=np.float64)[:, None] * velocity[None, :]
    if bounce:  # fold the straight path into [low, high] per axis (a triangle wave)
        span = np.maximum(high - low, 1e-9)
        u = np.mod(pos - low, 2 * span)
        pos = low + np.where(u > span, 2 * span - u, u)
    return pos


class ShapesDataset(torch.utils.data.Dataset):
    """Map-style dataset of captioned moving-shape clips.

    ``ds[i]`` is ``{"video": (T, 3, H, W) float32 in [0, 1], "text": str, "meta": {...}}`` with
    meta keys ``color``, ``shape``, ``direction``, ``speed``, ``background``, ``template``,
    ``positions`` ((T, 2) box centres, x/y in pixels), ``radius``, ``speed_px`` and ``fps``;
    ``direction`` and ``speed`` are ``""`` where they do not apply (images, a still shape).

    Args:
        size: frame side (or use ``height``/``width``); ``num_frames`` 1 gives images (no motion
            words in the caption). ``frames`` and ``num_clips`` are accepted as aliases of
            ``num_frames`` and ``length``.
        split: ``"train"``, ``"val"`` (same distribution, other random stream) or ``"holdout"``
            (only combinations matching ``holdout``).
        fps: frame rate stored in ``meta`` (for writing files; motion is defined per frame).
        object_scale: side of the shape's box over the shorter frame side (0.34: 11 px at 32x32).
        bounce: reflect off the borders, the first ``travel_frames`` steps inside (the caption names
            the first direction); ``travel_frames``: frames to cover ``SPEEDS[speed]`` of the free range.
        holdout: attribute combinations (dicts such as ``{"color": "red", "shape": "circle"}``)
            never produced by the train and val splits; the holdout split produces only those.
        colors/shapes/directions/speeds/backgrounds/templates: subsets of the vocabularies
            (``directions`` may include ``"still"``); combinations with identical object and
            background colour never occur.
    """

    def __init__(
        self,
        size: int = 64,
        num_frames: int = 16,
        seed: int = 0,
        length: int = 10_000,
        split: str = "train",
        *,
        height: int | None = None,
        width: int | None = None,
        fps: float = 8.0,
        object_scale: float = 0.34,
        bounce: bool = False,
        travel_frames: int | None = None,
        holdout: Iterable[Mapping[str, str]] = (),
        colors: Iterable[str] | None = None,
        shapes: Iterable[str] | None = None,
        directions: Iterable[str] | None = None,
        speeds: Iterable[str] | None = None,
        backgrounds: Iterable[str] | None = None,
        templates: Iterable[int] | None = None,
        frames: int | None = None,
        num_clips: int | None = None,
    ) -> None:
        self.num_frames = int(frames if frames is not None else num_frames)
        self.length = int(num_clips if num_clips is not None else length)
        self.height, self.width = int(height or size), int(width or size)
        if self.num_frames < 1 or self.length < 1 or min(self.height, self.width) < 8:
            raise PyramidflowError(
                f"need num_frames >= 1, length >= 1 and frames of at least 8x8 pixels, got "
                f"num_frames={self.num_frames}, length={self.length}, {self.height}x{self.width}"
            )
        if split not in SPLITS:
            raise PyramidflowError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if not 0.05 <= object_scale <= 0.8:
            raise PyramidflowError(f"object_scale must be in [0.05, 0.8], got {object_scale}")
        self.seed, self.split, self.fps, self.bounce = int(seed), split, float(fps), bool(bounce)
        self.travel_frames = max(self.num_frames - 1, 1) if travel_frames is None else int(travel_frames)
        if self.travel_frames < 1 or (self.travel_frames < self.num_frames - 1 and not self.bounce):
            raise PyramidflowError(
                f"travel_frames={travel_frames} must be >= 1, and >= num_frames - 1 = "
                f"{self.num_frames - 1} unless bounce=True (the path would leave the frame)"
            )
        self.radius = object_scale * min(self.height, self.width) / 2
        self.templates = _check_subset("templates", templates, range(len(TEMPLATES)))
        vocab = {
            "color": _check_subset("colors", colors, COLORS),
            "shape": _check_subset("shapes", shapes, SHAPES),
            "direction": _check_subset("directions", directions, MOVING_DIRECTIONS + ("still",))
            if directions is not None else MOVING_DIRECTIONS,
            "speed": _check_subset("speeds", speeds, SPEEDS),
            "background": _check_subset("backgrounds", backgrounds, BACKGROUNDS),
        }
        self.holdout = [dict(rule) for rule in holdout]
        for rule in self.holdout:
            bad = [k for k in rule if k not in ATTRIBUTES]
            if bad or not rule:
                raise PyramidflowError(f"holdout rules use keys from {ATTRIBUTES}, got {rule}")
        combos = []
        for values in itertools.product(*(vocab[a] for a in ATTRIBUTES)):
            combo = dict(zip(ATTRIBUTES, values, strict=True))
            if COLORS[combo["color"]] == BACKGROUNDS[combo["background"]]:
                continue
            held = any(_matches(combo, rule) for rule in self.holdout)
            if held == (split == "holdout"):
                combos.append(combo)
        if not combos:
            raise PyramidflowError(f"no attribute combination is left for split {split!r}")
        self.combos = combos

    def __len__(self) -> int:
        return self.length

    def attributes(self, index: int) -> dict:
        """Attributes, template and path of item ``index`` (no drawing)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        combo = dict(self.combos[int(rng.integers(len(self.combos)))])
        template = self.templates[int(rng.integers(len(self.templates)))]
        size = np.array([self.width, self.height], dtype=np.float64)
        r, T = self.radius, self.num_frames
        free = min(self.height, self.width) - 2 * r
        moving = T > 1 and combo["direction"] != "still"
        speed_px = SPEEDS[combo["speed"]] * free / self.travel_frames if moving else 0.0
        velocity = np.array(DIRECTIONS[combo["direction"]]) * speed_px if T > 1 else np.zeros(2)
        travel = velocity * (T - 1)
        lo = np.full(2, r)
        hi = size - r
        if self.bounce:  # the first travel_frames steps stay inside: the caption's direction holds there
            travel = velocity * min(self.travel_frames, T - 1)
        # every start whose straight path (over the clip, or its first travel_frames) stays inside
        smin, smax = lo - np.minimum(travel, 0), hi - np.maximum(travel, 0)
        start = smin + rng.random(2) * (smax - smin)
        positions = trajectory(start, velocity, T, r, hi, self.bounce)
        if T == 1:  # images: no motion ("" rather than None keeps default_collate working)
            combo["direction"], combo["speed"] = "", ""
        elif combo["direction"] == "still":
            combo["speed"] = ""
        return {**combo, "template": template, "positions": positions, "radius": r,
                "speed_px": speed_px, "fps": self.fps}

    def caption(self, meta: Mapping) -> str:
        return make_caption(
            meta["color"], meta["shape"], meta["background"], meta["direction"], meta["speed"],
            meta["template"],
        )

    def __getitem__(self, index: int) -> dict:
        meta = self.attributes(int(index))
        cover = render_shape(meta["shape"], meta["positions"], meta["radius"], self.height, self.width)
        bg = np.asarray(BACKGROUNDS[meta["background"]], dtype=np.float32)[None, :, None, None]
        fg = np.asarray(COLORS[meta["color"]], dtype=np.float32)[None, :, None, None]
        a = cover[:, None]  # (T, 1, H, W)
        video = bg + a * (fg - bg)  # (T, 3, H, W)
        return {"video": torch.from_numpy(video), "text": self.caption(meta), "meta": meta}
