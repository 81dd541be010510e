"""Is the object one whole, steady thing that moves like the dataset's objects? (per clip)

A clip is *intact* when all four hold (docs/maths.md section 13, evaluator):

* ``whole``: the object is detected in every frame, as an object: its region covers at most
  ``MAX_OBJECT_SHARE`` of the frame (under heavy noise the region can grow into the background);
* ``single``: no frame has a second region of at least ``SPLIT_SHARE`` of the object's area
  (:mod:`pyramidflow.eval.detect`): no split, no second object;
* ``size_stable``: every frame's area A_t is within a factor ``SIZE_RATIO`` of the median area,
  ``|log(A_t / median A)| <= log SIZE_RATIO``;
* ``on_path``: every centroid is within ``PATH_TOL * side`` pixels of the fitted bouncing path
  (:mod:`pyramidflow.eval.motion`); a jump, a teleport or a restart of the motion leaves frames far
  from any single constant-velocity path.

The tolerances come from the dataset itself (docs/evaluation.md, "Integrity"): real bouncing clips
of 16, 32 and 64 frames stay well inside them, and each one is far from what a broken clip shows.
"""

from __future__ import annotations

import numpy as np

from pyramidflow.eval.detect import FrameObject
from pyramidflow.eval.motion import Motion

MAX_OBJECT_SHARE = 0.5  # a region larger than this share of the frame is not an object
SIZE_RATIO = 1.5  # largest factor between a frame's object area and the clip's median area
PATH_TOL = 0.05  # largest distance of a centroid from the fitted path, as a share of the frame side
INTACT_MIN_FRAMES = 8  # clips this long or longer must be intact to be all correct


def check_integrity(objs: list[FrameObject], motion: Motion, height: int, width: int) -> dict:
    """Integrity of a clip (T frames of height x width pixels) from its per-frame objects and path.

    Returns ``{"intact": bool, "whole", "single", "size_stable", "on_path": bool,
    "missing_frames", "split_frames", "off_size_frames", "off_path_frames": [frame indices],
    "size_ratio": [min, max] of A_t / median A, "max_path_error_px": float (None without any
    detection), "path_tol_px": float}``.
    """
    found = np.array([o.detected and o.area <= MAX_OBJECT_SHARE * height * width for o in objs])  # (T,)
    areas = np.where(found, [o.area for o in objs], np.nan)  # (T,)
    ratio = areas / np.nanmedian(areas) if found.any() else areas  # (T,)
    off_size = found & (np.abs(np.log(np.where(found, ratio, 1.0))) > np.log(SIZE_RATIO))
    split = np.array([o.regions > 1 for o in objs])
    tol = PATH_TOL * min(height, width)
    errors = np.where(found, motion.errors, 0.0)  # (T,)
    off_path = found & (errors > tol)
    out = {
        "whole": bool(found.all()),
        "single": not split.any(),
        "size_stable": bool(found.any()) and not off_size.any(),
        "on_path": bool(found.any()) and not off_path.any(),
        "missing_frames": np.nonzero(~found)[0].tolist(),
        "split_frames": np.nonzero(split)[0].tolist(),
        "off_size_frames": np.nonzero(off_size)[0].tolist(),
        "off_path_frames": np.nonzero(off_path)[0].tolist(),
        "size_ratio": [float(np.nanmin(ratio)), float(np.nanmax(ratio))] if found.any() else [0.0, 0.0],
        "max_path_error_px": float(errors.max()) if found.any() else None,
        "path_tol_px": tol,
    }
    out["intact"] = out["whole"] and out["single"] and out["size_stable"] and out["on_path"]
    return out
