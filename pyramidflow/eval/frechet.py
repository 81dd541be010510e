"""A Fréchet distance between sets of clips on hand-made descriptors (FVD-like, no network).

Each clip (T, 3, H, W) in [0, 1] becomes the 20-number vector of :func:`clip_descriptor`; a set of
clips is summarised by the mean ``mu`` and covariance ``S`` of its vectors, and two sets are
compared with the Fréchet (2-Wasserstein) distance between Gaussians with those statistics::

    FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))

The descriptor (``DESCRIPTOR_NAMES`` lists the entries in order), with luma
``Y = 0.299 R + 0.587 G + 0.114 B`` and ``pool_k`` = average pooling by ``k x k``:

* 0-2: mean of R, G, B over all pixels and frames;
* 3-5: standard deviation of R, G, B over all pixels and frames;
* 6-14: for R, G, B, the share of pixels in [0, 1/3), [1/3, 2/3), [2/3, 1] (colour composition);
* 15-17: with ``g_k = log(1e-3 + sqrt(mean(dx^2) + mean(dy^2)))`` of ``pool_k(Y)`` (dx, dy: the
  differences between horizontally / vertically adjacent pixels; an RMS detail energy, so blur
  lowers it, which a mean |gradient| would not): ``g_1``, ``g_1 - g_2``, ``g_2 - g_4`` -- the
  detail level and two contrast-free sharpness ratios;
* 18-19: with ``m_k = log(1e-3 + sqrt(mean(dt^2)))`` of ``pool_k(Y)`` (dt: the difference between
  consecutive frames): ``m_1``, ``m_1 - m_4`` -- motion energy and how fine-grained it is
  (``m_k = log(1e-3)`` for one-frame clips).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
from scipy import linalg

from pyramidflow.eval.detect import as_clip_array

DESCRIPTOR_NAMES: tuple[str, ...] = (
    *(f"mean_{c}" for c in "rgb"),
    *(f"std_{c}" for c in "rgb"),
    *(f"hist_{c}_{b}" for c in "rgb" for b in ("low", "mid", "high")),
    "log_detail", "log_detail_ratio_1_2", "log_detail_ratio_2_4",
    "log_motion", "log_motion_ratio_1_4",
)
_EPS = 1e-3


def _pool(y: np.ndarray, k: int) -> np.ndarray:
    """Average-pool (T, H, W) by k x k (trailing rows/columns that do not fill a block dropped)."""
    if k == 1:
        return y
    T, H, W = y.shape
    y = y[:, : H // k * k, : W // k * k]
    return y.reshape(T, H // k, k, W // k, k).mean((2, 4))


def clip_descriptor(video) -> np.ndarray:
    """The 20 descriptor values of one clip (see the module docstring): (20,) float64."""
    clip = as_clip_array(video)  # (T, 3, H, W)
    pix = clip.transpose(1, 0, 2, 3).reshape(3, -1)  # (3, N)
    hist = [((pix >= lo) & (pix < hi)).mean(1) for lo, hi in ((0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.01))]
    hist = np.stack(hist, 1).reshape(-1)  # (9,) channel-major
    luma = np.tensordot(np.array([0.299, 0.587, 0.114]), clip, axes=([0], [1]))  # (T, H, W)
    grads = []
    for k in (1, 2, 4):
        y = _pool(luma, k)
        g = 0.0
        if min(y.shape[1:]) > 1:
            g = (np.diff(y, axis=2) ** 2).mean() + (np.diff(y, axis=1) ** 2).mean()
        grads.append(np.log(_EPS + np.sqrt(g)))
    grads = [grads[0], grads[0] - grads[1], grads[1] - grads[2]]  # level, then sharpness ratios
    motion = []
    for k in (1, 4):
        y = _pool(luma, k)
        m = (np.diff(y, axis=0) ** 2).mean() if len(y) > 1 else 0.0
        motion.append(np.log(_EPS + np.sqrt(m)))
    motion = [motion[0], motion[0] - motion[1]]
    return np.concatenate([pix.mean(1), pix.std(1), hist, grads, motion])


def descriptor_stats(videos: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of the descriptors of a set of at least two clips."""
    feats = np.stack([clip_descriptor(v) for v in videos])
    if len(feats) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 clips per set, got {len(feats)}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    The matrix square root is taken with ``scipy.linalg.sqrtm``; when the product is singular
    (fewer clips than descriptor dimensions) both covariances get ``1e-6 I`` first. Only the real
    part of the trace is kept (the imaginary part is rounding noise).
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    if caught or not np.isfinite(root).all():
        eye = 1e-6 * np.eye(len(cov_a))
        root = linalg.sqrtm((cov_a + eye) @ (cov_b + eye))
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * float(np.real(np.trace(root)))
    return max(float(value), 0.0)


def frechet_video_distance(videos_a: Iterable, videos_b: Iterable) -> float:
    """Fréchet distance between the descriptor statistics of two sets of clips."""
    return frechet_distance(*descriptor_stats(videos_a), *descriptor_stats(videos_b))
