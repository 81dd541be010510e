"""Image analysis of shapes clips: background, and per frame the object's colour, shape and position.

No learned weights. For a clip (T, 3, H, W) in [0, 1]:

1. background colour = per-channel median of all pixels of all frames (the object covers ~10 %);
2. per frame, the distance of every pixel to that colour, smoothed (Gaussian, sigma 0.6 px), is
   thresholded at half its peak: the largest connected region above it, holes filled, is the object (a frame
   whose peak is under ``MIN_CONTRAST`` has no object); the other regions of at least
   ``SPLIT_SHARE`` of its area are counted (a split or second object: ``FrameObject.regions``);
3. colour = nearest palette entry to the median colour of the object's core (distance above 3/4
   of the peak); position = the region's centroid (x, y) in pixels; ``box`` = its bounding box;
4. shape, from the k-fold symmetry strengths of the object (docs/maths.md section 13, evaluator)::

       s_k = |sum_p w_p z_p^k| / sum_p w_p |z_p|^k,   k = 3, 4

   with z_p = (x_p - cx) + i (y_p - cy) the pixel's offset from the weighted centroid and
   w_p = clip((d_p / peak - 1/4) / (1/2), 0, 1) a soft version of the half-peak mask (d_p the
   smoothed distance; 0 outside the region grown by 2 px). s_k is 0 for a disc and does not
   depend on position, scale or rotation; clean renders of the dataset give disc (0.00, 0.00),
   square (0.00, 0.41; an ideal square 3/7) and apex-up triangle (0.62, 0.02). Triangle when
   s_3 >= ``TRIANGLE_S3``, else square when s_4 >= ``SQUARE_S4``, else circle.

Robust to the mild blur and noise of a generative model: the half-peak threshold keeps edges where
a symmetric blur puts them, the symmetry strengths are sums over all pixels with anti-aliased
weights (no bounding box, so rounded corners and sub-pixel positions move them little), and
medians and majority votes ignore stray pixels and frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pyramidflow.data.vocab import BACKGROUNDS, COLORS, SHAPES

MIN_CONTRAST = 0.2  # smallest colour distance (RGB, [0, 1]) that counts as an object
SPLIT_SHARE = 0.2  # another region of at least this share of the object's area is a second piece
# Cuts on the symmetry strengths, halfway between the classes as rendered blurred (sigma 0.5-1 px
# at 32x32), with corners rounded (up to 30 % of the half side), sub-pixel positions, sizes of
# 8-14 px and noise (docs/evaluation.md): triangles s_3 >= 0.39 vs <= 0.04 for discs and squares;
# squares s_4 >= 0.24 vs discs <= 0.05.
TRIANGLE_S3 = 0.2
SQUARE_S4 = 0.14
SMOOTH_PX = 0.6  # sigma of the Gaussian smoothing of the colour distance
assert set(SHAPES) == {"circle", "square", "triangle"}, "classify_shape names every shape"

_COLOR_NAMES = list(COLORS)
_COLOR_TABLE = np.array([COLORS[c] for c in _COLOR_NAMES])  # (K, 3)
_BG_NAMES = list(BACKGROUNDS)
_BG_TABLE = np.array([BACKGROUNDS[b] for b in _BG_NAMES])


def nearest(table: np.ndarray, names: list[str], rgb: np.ndarray) -> str:
    return names[int(np.argmin(((table - rgb[None]) ** 2).sum(1)))]


def classify_shape(sym3: float, sym4: float) -> str:
    """Shape name from the 3- and 4-fold symmetry strengths (module docstring, step 4)."""
    if sym3 >= TRIANGLE_S3:
        return "triangle"
    return "square" if sym4 >= SQUARE_S4 else "circle"


@dataclass
class FrameObject:
    """What was found in one frame (``detected`` False: nothing stood out from the background)."""

    detected: bool
    color: str = ""
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shape: str = ""
    sym3: float = 0.0  # 3-fold symmetry strength s_3
    sym4: float = 0.0  # 4-fold symmetry strength s_4
    area: float = 0.0  # pixels of the object region (holes filled)
    x: float = float("nan")
    y: float = float("nan")
    extent: float = 0.0  # larger side of the bounding box, pixels
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # x0, y0, x1, y1 (pixel edges)
    regions: int = 0  # regions of at least SPLIT_SHARE of the object's area, the object included
    other_area: float = 0.0  # area of the largest other region above the threshold, pixels


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


def symmetry_strengths(weights: np.ndarray) -> tuple[float, float]:
    """(s_3, s_4) of a non-negative weight map (H, W) (module docstring, step 4)."""
    H, W = weights.shape
    ys, xs = np.mgrid[0:H, 0:W] + 0.5  # pixel centres
    total = weights.sum()
    z = (xs - (weights * xs).sum() / total) + 1j * (ys - (weights * ys).sum() / total)  # (H, W)
    r = np.abs(z)
    return tuple(float(np.abs((weights * z**k).sum()) / max((weights * r**k).sum(), 1e-12))
                 for k in (3, 4))


def _pieces(above: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions of a boolean map (H, W): labels (H, W), 0 outside, and sizes (n,) in
    pixels, region ``i + 1`` having ``sizes[i]``."""
    labels, n = ndimage.label(above)
    sizes = ndimage.sum_labels(np.ones(above.shape), labels, index=np.arange(1, n + 1))
    return labels, np.atleast_1d(sizes)


def analyse_frame(frame: np.ndarray, bg: np.ndarray) -> FrameObject:
    """Find the object in one frame (3, H, W) given the background colour (3,)."""
    dist = np.sqrt(((frame - bg[:, None, None]) ** 2).sum(0))  # (H, W)
    dist = ndimage.gaussian_filter(dist, SMOOTH_PX, mode="nearest")
    peak = float(dist.max())
    if peak < MIN_CONTRAST:
        return FrameObject(False)
    labels, sizes = _pieces(dist > 0.5 * peak)
    if len(sizes) == 0:
        return FrameObject(False)
    main = int(np.argmax(sizes))
    others = np.delete(sizes, main)  # (n - 1,)
    region = ndimage.binary_fill_holes(labels == main + 1)  # (H, W) bool
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    near = ndimage.binary_dilation(region, iterations=2)
    weights = np.clip((dist / peak - 0.25) / 0.5, 0.0, 1.0) * near  # soft half-peak mask
    sym3, sym4 = symmetry_strengths(weights)
    core = region & (dist > 0.75 * peak)
    rgb = np.median(frame[:, core if core.any() else region], axis=1)
    return FrameObject(
        True,
        color=nearest(_COLOR_TABLE, _COLOR_NAMES, rgb),
        rgb=tuple(float(v) for v in rgb),
        shape=classify_shape(sym3, sym4),
        sym3=sym3,
        sym4=sym4,
        area=float(region.sum()),
        x=float(xs.mean() + 0.5),
        y=float(ys.mean() + 0.5),
        extent=float(max(y1 - y0, x1 - x0)),
        box=(float(x0), float(y0), float(x1), float(y1)),
        regions=1 + int((others >= SPLIT_SHARE * sizes[main]).sum()),
        other_area=float(others.max()) if len(others) else 0.0,
    )


def analyse_clip(video) -> tuple[np.ndarray, str, list[FrameObject]]:
    """(background colour (3,), background name, per-frame objects) of a clip."""
    clip = as_clip_array(video)
    bg = background_color(clip)
    return bg, nearest(_BG_TABLE, _BG_NAMES, bg), [analyse_frame(f, bg) for f in clip]
