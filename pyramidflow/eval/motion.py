"""The object's path: constant velocity, reflected off the frame's walls (the shapes dataset's physics).

The dataset moves the box centre ``p0 + v t`` and folds it into ``[r, side - r]`` per axis
(:func:`pyramidflow.data.shapes.trajectory`). The evaluator fits the same model to the per-frame
centroids c_t, each axis on its own (docs/maths.md section 13, evaluator)::

    fold(u; lo, hi) = lo + (m if m <= S else 2 S - m),   m = (u - lo) mod 2 S,   S = hi - lo
    p(t) = fold(p0 + v t; lo, hi)
    minimise  sum_t (c_t - p(t))^2 + ((lo - lo_box)^2 + (hi - hi_box)^2) / WALL_PRIOR_PX^2

a triangle wave (velocities beyond S per frame alias to slower ones, so |v| <= S). The walls start
where the object's bounding box touches the frame: ``lo_box`` = median over frames of (centroid -
box start), ``hi_box`` = side - median(box end - centroid), so a triangle, whose centroid is not
its box centre, gets its own walls; the fit may move them by about a pixel (the box is measured to
the pixel, the bounces pin the walls more finely).

Fitting: the least-squares line ``p0 + v t`` first (both axes at once, exactly as for clips that
never bounce). An axis of a clip with at least ``FOLD_MIN_FRAMES`` detections whose line leaves an
RMS error above ``LINE_TOL_PX`` is refitted with the fold: a grid over (p0, v) on the first
``GRID_FRAMES`` frames with the box walls (``GRID_P0`` start positions across [lo, hi], a velocity
step small enough that the path drifts at most S / 4 over those frames), then Gauss-Newton over
horizons doubling to the whole clip: with the branch k_t = floor((p0 + v t - lo) / S) of every
frame fixed, p(t) = s_t (p0 + v t) + a_t lo + b_t hi is linear in (p0, v, lo, hi)
(s_t = (-1)^k_t; (a_t, b_t) = (k_t, -k_t) for even k_t, (1 - k_t, 1 + k_t) for odd), so each step
is a linear least-squares solve; repeat until the branches stop changing. The fold replaces the
line only where it at least halves the RMS error (``FOLD_GAIN``): centroid noise alone rarely lets
a fold do that, a bounce leaves the line pixels off. A clip whose centroids lie on a line (one
that never meets a wall) is therefore scored exactly as by the straight-line fit, and so is every
clip with fewer than ``FOLD_MIN_FRAMES`` detections.

The reported velocity is the initial one, v times the slope of the fold just after t = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyramidflow.eval.detect import FrameObject

LINE_TOL_PX = 0.5  # RMS error (px) of the straight line under which an axis is not refitted
FOLD_MIN_FRAMES = 6  # fewer detections keep the line: 4 parameters (walls included) would fit noise
GRID_P0 = 41  # start positions of the grid, across [lo, hi]
GRID_FRAMES = 16  # frames the grid is evaluated on (then Gauss-Newton takes in the rest)
MAX_GRID_V = 1025  # cap on the number of velocities of the grid
GAUSS_NEWTON_STEPS = 20
WALL_PRIOR_PX = 1.0  # how far (standard deviation, px) the fit may move a wall from its box estimate
FOLD_GAIN = 0.5  # the folded path replaces the line only if it at least halves the RMS error


@dataclass
class Motion:
    """A fitted path. ``velocity`` is the initial velocity (px/frame, x right, y down) of the folded
    path; ``path`` (T, 2) its positions in every frame; ``errors`` (T,) the distance (px) from each
    centroid to it (NaN where nothing was detected); ``rms`` their RMS; ``bounces`` the wall hits
    over the clip; ``model`` "line" (no axis refitted) or "bounce"."""

    velocity: np.ndarray
    path: np.ndarray
    errors: np.ndarray
    rms: float
    bounces: int
    model: str


def fold(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect unbounded coordinates into [lo, hi] (a triangle wave of period 2 (hi - lo)), as
    :func:`pyramidflow.data.shapes.trajectory` does."""
    span = max(hi - lo, 1e-9)
    m = np.mod(u - lo, 2 * span)
    return lo + np.where(m > span, 2 * span - m, m)


def _branches(u: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fold is linear on each branch k = floor((u - lo) / S): fold(u) = s u + a_lo lo + a_hi hi
    with s = +1, (a_lo, a_hi) = (k, -k) for even k and s = -1, (1 - k, 1 + k) for odd k.
    Returns s, a_lo, a_hi, each shaped like u."""
    k = np.floor((u - lo) / max(hi - lo, 1e-9))
    even = np.mod(k, 2) == 0
    return np.where(even, 1.0, -1.0), np.where(even, k, 1 - k), np.where(even, -k, 1 + k)


def walls(objs: list[FrameObject], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest centroid (x, y) at which the object's box touches the frame: (2,), (2,)."""
    found = [o for o in objs if o.detected]
    c = np.array([[o.x, o.y] for o in found])  # (n, 2)
    box = np.array([o.box for o in found])  # (n, 4): x0, y0, x1, y1
    lo = np.median(c - box[:, :2], axis=0)
    hi = np.array([width, height], dtype=np.float64) - np.median(box[:, 2:] - c, axis=0)
    return lo, hi


def _grid_fit(t: np.ndarray, c: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Best (p0, v) of the folded model on a grid: p0 across [lo, hi], |v| <= hi - lo."""
    span = hi - lo
    duration = max(float(t.max() - t.min()), 1.0)
    n_v = min(2 * int(np.ceil(4 * duration)) + 1, MAX_GRID_V)  # step <= span / (2 duration)
    p0 = np.linspace(lo, hi, GRID_P0)[:, None, None]  # (P, 1, 1)
    v = np.linspace(-span, span, n_v)[None, :, None]  # (1, V, 1)
    err = ((fold(p0 + v * t, lo, hi) - c) ** 2).sum(-1)  # (P, V)
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)
    return float(p0[i, 0, 0]), float(v[0, j, 0])


def _refine(t: np.ndarray, c: np.ndarray, guess: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Gauss-Newton on the fold from ``guess`` = (p0, v, lo, hi): least squares with every frame's
    branch fixed, the walls pulled towards ``prior`` (lo, hi) with a standard deviation of
    ``WALL_PRIOR_PX``, repeated until the branches stop changing. Returns (p0, v, lo, hi)."""
    theta, branches = guess, None
    for _ in range(GAUSS_NEWTON_STEPS):
        s, a_lo, a_hi = _branches(theta[0] + theta[1] * t, theta[2], theta[3])  # (n,) each
        if branches is not None and np.array_equal(branches, np.stack([s, a_lo])):
            break
        branches = np.stack([s, a_lo])  # (2, n): identifies every frame's branch
        A = np.concatenate([np.stack([s, s * t, a_lo, a_hi], 1),  # (n, 4): d p(t) / d theta
                            np.array([[0, 0, 1, 0], [0, 0, 0, 1]]) / WALL_PRIOR_PX])  # (2, 4)
        y = np.concatenate([c, prior / WALL_PRIOR_PX])  # (n + 2,)
        theta, *_ = np.linalg.lstsq(A, y, rcond=None)
    return theta


def fit_axis(t: np.ndarray, c: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(p0, v, lo, hi) of the folded path through one coordinate c (n,) seen at frames t (n,)
    (sorted), starting from the walls (lo, hi): grid over the first ``GRID_FRAMES`` frames, then
    Gauss-Newton over horizons doubling to the whole clip. p0 is the unfolded start."""
    prior = np.array([lo, hi])
    horizon = GRID_FRAMES
    first = t < t[0] + horizon
    theta = np.array([*_grid_fit(t[first], c[first], lo, hi), lo, hi])
    while True:
        seen = t < t[0] + horizon
        theta = _refine(t[seen], c[seen], theta, prior)
        if seen.all():
            return theta
        horizon *= 2


def _bounce_axis(t: np.ndarray, c: np.ndarray, line: np.ndarray, lo: float, hi: float,
                 frames: int) -> tuple[float, np.ndarray, int] | None:
    """Refit one axis with the folded model where the straight line (values ``line`` (n,) at t)
    misses the coordinates c (n,) by more than ``LINE_TOL_PX`` RMS and the fold at least divides
    that error by 1 / ``FOLD_GAIN``.

    Returns (initial velocity, folded path (frames,), wall hits), or None to keep the line."""
    line_sq = float(((line - c) ** 2).sum())
    if len(t) < FOLD_MIN_FRAMES or line_sq <= LINE_TOL_PX**2 * len(t) or hi - lo < 1.0:
        return None
    p0, v, lo, hi = fit_axis(t, c, lo, hi)
    if hi - lo < 1.0:
        return None
    folded = fold(p0 + v * np.arange(frames, dtype=np.float64), lo, hi)  # (frames,)
    if float(((folded[t.astype(int)] - c) ** 2).sum()) > FOLD_GAIN**2 * line_sq:
        return None
    # the direction seen between the first two frames (a start on a wall is otherwise ambiguous:
    # p0 and its mirror image with -v give the same path); just after t = 0 where that step is flat
    step = folded[1] - folded[0] if frames > 1 else 0.0
    slope = np.sign(step) * np.sign(v) if abs(step) > 1e-6 * abs(v) else _branches(
        np.array([p0 + 1e-6 * v]), lo, hi)[0][0]
    k = np.floor((p0 + v * np.array([0.0, frames - 1]) - lo) / (hi - lo))  # branch at the ends
    return float(v * slope), folded, int(abs(k[1] - k[0]))


def _line(t: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Least-squares line through positions (n, 2) at frames t (n,): rows (intercept, slope), (2, 2)."""
    A = np.stack([np.ones_like(t), t], 1)  # (n, 2)
    coef, *_ = np.linalg.lstsq(A, pos, rcond=None)
    return coef


def fit_motion(objs: list[FrameObject], height: int, width: int) -> Motion:
    """Fit the bouncing constant-velocity path (module docstring) to the centroids of the frames
    where the object was detected; a frame (height, width) in pixels gives the walls."""
    T = len(objs)
    seen = np.array([o.detected for o in objs])  # (T,)
    t = np.nonzero(seen)[0].astype(np.float64)  # (n,)
    pos = np.array([[o.x, o.y] for o in objs if o.detected]).reshape(-1, 2)  # (n, 2)
    errors = np.full(T, np.nan)
    if len(t) < 2:  # nothing to fit: the object stays where it was seen
        path = np.repeat(pos[:1] if len(t) else np.full((1, 2), np.nan), T, axis=0)
        errors[seen] = 0.0
        return Motion(np.zeros(2), path, errors, 0.0, 0, "line")
    coef = _line(t, pos)
    path = coef[0][None] + np.arange(T, dtype=np.float64)[:, None] * coef[1][None]  # (T, 2)
    velocity = coef[1].copy()
    lo, hi = walls(objs, height, width)
    bounces, model = 0, "line"
    for axis in range(2):
        refit = _bounce_axis(t, pos[:, axis], path[seen, axis], lo[axis], hi[axis], T)
        if refit is not None:
            velocity[axis], path[:, axis], hits = refit
            bounces, model = bounces + hits, "bounce"
    errors[seen] = np.linalg.norm(pos - path[seen], axis=1)
    return Motion(velocity, path, errors, float(np.sqrt(np.mean(errors[seen] ** 2))), bounces, model)
