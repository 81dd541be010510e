"""Image analysis of shapes clips: background, and per frame the object's colour, shape and position.

No learned weights. For a clip (T, 3, H, W) in [0, 1]:

1. background colour = per-channel median of all pixels of all frames (the object covers ~10 %);
2. per frame, the distance of every pixel to that colour, smoothed (Gaussian, sigma 0.6 px), is
   thresholded at half its peak: the largest connected region above it, holes filled, is the object (a frame
   whose peak is under ``MIN_CONTRAST`` has no object);
3. colour = nearest palette entry to the median colour of the object's core (distance above 3/4
   of the peak); shape = nearest prototype (``SHAPE_PROTOTYPES``) in (fill ratio of the bounding
   box, taper), where taper = fitted growth of the row widths from the top to the bottom row of
   the box over the widest row (apex-up triangle ~0.9, circle and square ~0);
   position = the region's centroid (x, y) in pixels.

Robust to the mild blur and noise of a generative model: the half-peak threshold keeps edges where
a symmetric blur puts them, medians and majority votes ignore stray pixels and frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pyramidflow.data.vocab import BACKGROUNDS, COLORS, SHAPES

MIN_CONTRAST = 0.2  # smallest colour distance (RGB, [0, 1]) that counts as an object
# (fill ratio, taper) of clean renders: a disc fills pi/4 of its box, a square all of it; the
# apex-up triangle fills ~0.6 of its box once rasterised and its rows widen from ~0 to full.
SHAPE_PROTOTYPES = {"circle": (np.pi / 4, 0.0), "square": (1.0, 0.0), "triangle": (0.6, 0.9)}
assert set(SHAPE_PROTOTYPES) == set(SHAPES)

_COLOR_NAMES = list(COLORS)
_COLOR_TABLE = np.array([COLORS[c] for c in _COLOR_NAMES])  # (K, 3)
_BG_NAMES = list(BACKGROUNDS)
_BG_TABLE = np.array([BACKGROUNDS[b] for b in _BG_NAMES])


def nearest(table: np.ndarray, names: list[str], rgb: np.ndarray) -> str:
    return names[int(np.argmin(((table - rgb[None]) ** 2).sum(1)))]


def classify_shape(fill: float, taper: float) -> str:
    """Nearest shape prototype in (fill ratio, taper)."""
    return min(SHAPE_PROTOTYPES, key=lambda s: (fill - SHAPE_PROTOTYPES[s][0]) ** 2
               + (taper - SHAPE_PROTOTYPES[s][1]) ** 2)


@dataclass
class FrameObject:
    """What was found in one frame (``detected`` False: nothing stood out from the background)."""

    detected: bool
    color: str = ""
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shape: str = ""
    fill: float = 0.0
    taper: float = 0.0
    area: float = 0.0
    x: float = float("nan")
    y: float = float("nan")
    extent: float = 0.0  # larger side of the bounding box, pixels


def as_clip_array(video) -> np.ndarray:
    """(T, 3, H, W) or (3, H, W) torch/numpy, float [0, 1] or uint8 -> float64 (T, 3, H, W)."""
    arr = video.detach().cpu().numpy() if hasattr(video, "detach") else np.asarray(video)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"a clip must be (T, 3, H, W), got shape {tuple(arr.shape)}")
    arr = arr.astype(np.float64) / (255.0 if arr.dtype == np.uint8 else 1.0)
    return np.clip(np.nan_to_num(arr), 0.0, 1.0)


def background_color(clip: np.ndarray) -> np.ndarray:
    """Per-channel median over all pixels of all frames: (3,)."""
    return np.median(clip.transpose(1, 0, 2, 3).reshape(3, -1), axis=1)


def analyse_frame(frame: np.ndarray, bg: np.ndarray) -> FrameObject:
    """Find the object in one frame (3, H, W) given the background colour (3,)."""
    dist = np.sqrt(((frame - bg[:, None, None]) ** 2).sum(0))  # (H, W)
    dist = ndimage.gaussian_filter(dist, 0.6, mode="nearest")
    peak = float(dist.max())
    if peak < MIN_CONTRAST:
        return FrameObject(False)
    labels, n = ndimage.label(dist > 0.5 * peak)
    if n == 0:
        return FrameObject(False)
    sizes = ndimage.sum_labels(np.ones_like(dist), labels, index=np.arange(1, n + 1))
    region = ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    area = float(region.sum())
    fill = area / float((y1 - y0) * (x1 - x0))
    widths = region[y0:y1].sum(1).astype(np.float64)  # pixels per row, top to bottom
    rows = np.arange(len(widths), dtype=np.float64)
    taper = float(np.polyfit(rows, widths, 1)[0] * (len(rows) - 1) / widths.max()) if len(rows) > 1 else 0.0
    core = region & (dist > 0.75 * peak)
    rgb = np.median(frame[:, core if core.any() else region], axis=1)
    return FrameObject(
        True,
        color=nearest(_COLOR_TABLE, _COLOR_NAMES, rgb),
        rgb=tuple(float(v) for v in rgb),
        shape=classify_shape(fill, taper),
        fill=fill,
        taper=taper,
        area=area,
        x=float(xs.mean() + 0.5),
        y=float(ys.mean() + 0.5),
        extent=float(max(y1 - y0, x1 - x0)),
    )


def analyse_clip(video) -> tuple[np.ndarray, str, list[FrameObject]]:
    """(background colour (3,), background name, per-frame objects) of a clip."""
    clip = as_clip_array(video)
    bg = background_color(clip)
    return bg, nearest(_BG_TABLE, _BG_NAMES, bg), [analyse_frame(f, bg) for f in clip]
