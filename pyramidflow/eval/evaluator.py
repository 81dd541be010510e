"""Does a shapes clip show what its prompt asked for?

:func:`evaluate_video` combines the per-frame analysis of :mod:`pyramidflow.eval.detect` over
time: colour and shape by majority over the frames where the object was found (shape from the
median features), the motion from the bouncing constant-velocity path of
:mod:`pyramidflow.eval.motion` fitted to the centroids (a straight line ``p(t) = p0 + v t`` when
the object never meets a wall), with ``v`` its initial velocity (docs/maths.md section 13, evaluator):

* travel = ``|v| F`` with F = ``travel_frames`` (default the clip, ``T - 1``): the distance the
  object covers in F frames;
* ``still`` when travel is under ``STILL_TRAVEL`` of the frame side, else the nearest of the 8
  compass directions to the angle of ``v`` (45-degree sectors; y grows downwards, so "up" is -y);
* speed share = travel / (frame side - object extent), the share of the free range covered in F
  frames (the definition of :data:`pyramidflow.data.vocab.SPEEDS` and of the dataset's
  ``travel_frames``), read as the nearest named speed;
* integrity (:mod:`pyramidflow.eval.integrity`): one whole object of steady size on the fitted
  path in every frame; clips of ``INTACT_MIN_FRAMES`` or more must be intact to be ``all_correct``.

Checks for attributes the prompt does not name are ``None`` and left out of accuracies.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Iterable

import numpy as np

from pyramidflow.data.vocab import DIRECTIONS, MOVING_DIRECTIONS, SPEEDS, is_shapes_prompt, parse_prompt
from pyramidflow.eval.detect import analyse_clip, classify_shape
from pyramidflow.eval.integrity import INTACT_MIN_FRAMES, check_integrity
from pyramidflow.eval.motion import fit_motion

STILL_TRAVEL = 0.1  # fitted travel, as a share of the frame side, below which the clip is "still"
CHECKS = ("color", "shape", "direction", "speed", "background")


def _majority(labels: list[str]) -> tuple[str, float]:
    """Most common label and the share of frames that agree with it."""
    label, count = Counter(labels).most_common(1)[0]
    return label, count / len(labels)


def direction_of(velocity: np.ndarray, travel: float, side: float) -> str:
    """Compass direction of a velocity (x right, y down), or "still" for little travel."""
    if travel < STILL_TRAVEL * side:
        return "still"
    unit = velocity / (np.linalg.norm(velocity) + 1e-12)
    return max(MOVING_DIRECTIONS, key=lambda d: float(np.dot(unit, DIRECTIONS[d])))


def speed_of(share: float) -> str:
    return min(SPEEDS, key=lambda s: abs(SPEEDS[s] - share))


def check_travel_frames(travel_frames, frames: int) -> int:
    """Frames over which a named speed covers its share of the free range: ``travel_frames``, or
    the clip (``frames - 1``, at least 1) for None. Raises ValueError for anything but an integer >= 1."""
    if travel_frames is None:
        return max(frames - 1, 1)
    whole = isinstance(travel_frames, numbers.Integral) and not isinstance(travel_frames, bool)
    if not whole or travel_frames < 1:
        raise ValueError(f"travel_frames must be an integer >= 1 (frames in which a named speed covers "
                         f"its share of the free range) or None for the clip, got {travel_frames!r}")
    return int(travel_frames)


def describe_video(video, travel_frames: int | None = None) -> dict:
    """What the clip (T, 3, H, W) shows, independent of any prompt; ``travel_frames`` as in
    :func:`evaluate_video`."""
    bg_rgb, background, objs = analyse_clip(video)
    T = len(objs)
    height, width = (int(n) for n in np.shape(video)[-2:])
    side = float(min(height, width))
    steps = check_travel_frames(travel_frames, T)
    found = [o for o in objs if o.detected]
    motion = fit_motion(objs, height, width)
    integrity = check_integrity(objs, motion, height, width)
    out = {"background": background, "background_rgb": [float(v) for v in bg_rgb],
           "frames": T, "detected_frames": len(found), "color": None, "shape": None,
           "direction": None, "speed": None, "velocity": [0.0, 0.0], "travel": 0.0,
           "travel_frames": steps, "bounces": motion.bounces, "motion_model": motion.model,
           "intact": integrity.pop("intact"), "integrity": integrity}
    if not found:
        out.update(temporal_consistency=0.0, positions=[])
        return out
    color, color_agree = _majority([o.color for o in found])
    _, shape_agree = _majority([o.shape for o in found])
    sym3, sym4 = np.median([[o.sym3, o.sym4] for o in found], axis=0)
    travel = float(np.linalg.norm(motion.velocity)) * steps
    extent = float(np.median([o.extent for o in found]))
    areas = np.array([o.area for o in found])
    components = {
        "color_agreement": color_agree,
        "shape_agreement": shape_agree,
        "size_stability": float(np.clip(1 - areas.std() / areas.mean(), 0, 1)),
        "path_smoothness": float(np.exp(-motion.rms / (0.05 * side))),
    }
    out.update(
        color=color,
        shape=classify_shape(float(sym3), float(sym4)),
        velocity=[float(v) for v in motion.velocity],
        travel=travel,
        positions=[[o.x, o.y] for o in objs],
        temporal_components=components,
        temporal_consistency=len(found) / T * float(np.mean(list(components.values()))),
    )
    if T > 1:
        out["direction"] = direction_of(motion.velocity, travel, side)
        if out["direction"] != "still":
            out["speed"] = speed_of(travel / max(side - extent, 1.0))
    return out


def evaluate_video(video, prompt: str, travel_frames: int | None = None) -> dict:
    """Judge a clip (T, 3, H, W) in [0, 1] (or uint8) against a prompt.

    ``travel_frames``: frames in which a named speed covers its share of the free range (the
    dataset's ``travel_frames``); None: the clip, ``T - 1``.

    Returns the description (:func:`describe_video`, with ``intact`` and ``integrity``), the
    parsed ``prompt`` attributes, and ``color_correct``, ``shape_correct``, ``direction_correct``,
    ``speed_correct``, ``background_correct`` (``None`` where the prompt does not name the
    attribute; the speed check only for moving prompts) and ``all_correct``: every check that
    applies, and for clips of ``INTACT_MIN_FRAMES`` or more frames an intact clip. A prompt that
    is not a shapes prompt (:func:`is_shapes_prompt`: it names no shape) gets ``shapes_prompt``
    False and every check ``None``: the evaluator knows only the shapes dataset.
    """
    seen = describe_video(video, travel_frames)
    asked = parse_prompt(prompt)
    applies = is_shapes_prompt(prompt)
    result = {"prompt": prompt, "asked": asked, "shapes_prompt": applies, **seen}
    for key in CHECKS:
        want = asked[key] if applies else None
        if key == "speed" and asked["direction"] in (None, "still"):
            want = None
        if key == "direction" and seen["frames"] == 1:
            want = None  # an image has no motion to judge
        result[f"{key}_correct"] = None if want is None else seen[key] == want
    applied = [result[f"{k}_correct"] for k in CHECKS if result[f"{k}_correct"] is not None]
    if seen["frames"] >= INTACT_MIN_FRAMES:
        applied.append(seen["intact"])
    result["all_correct"] = (bool(applied) and all(applied)) if applies else None
    return result


def accuracies(results: Iterable[dict]) -> dict[str, float | None]:
    """Share of correct checks per attribute (over the results where it applies), ``all``, the
    share of ``intact`` clips, and the mean temporal consistency, over the clips with shapes prompts
    (``scored`` of ``count``; all ``None`` when there is none: the checks mean nothing for other
    footage)."""
    results = list(results)
    scored = [r for r in results if r.get("shapes_prompt", True)]
    out: dict[str, float | None] = {}
    for key in (*CHECKS, "all"):
        vals = [r[f"{key}_correct"] for r in scored if r.get(f"{key}_correct") is not None]
        out[key] = float(np.mean(vals)) if vals else None
    intact = [r["intact"] for r in scored if "intact" in r]
    out["intact"] = float(np.mean(intact)) if intact else None
    consistency = [r["temporal_consistency"] for r in scored]
    out["temporal_consistency"] = float(np.mean(consistency)) if scored else None
    out["count"], out["scored"] = len(results), len(scored)
    return out


def evaluate_folder(folder, travel_frames: int | None = None) -> dict:
    """Evaluate every video/GIF/image in ``folder`` against its same-named ``.txt`` prompt
    (``travel_frames`` as in :func:`evaluate_video`).

    Returns ``{"results": [{"file", ...evaluate_video fields}], "accuracy": accuracies(...),
    "skipped": [{"file", "reason"}]}`` (files without a prompt or that cannot be read).
    """
    from pathlib import Path

    from pyramidflow.io.read import MEDIA_SUFFIXES, VideoReadError, read_video

    check_travel_frames(travel_frames, 1)
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {folder}")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
    if not files:
        kinds = ", ".join(sorted(MEDIA_SUFFIXES))
        raise FileNotFoundError(f"no video files in {folder} (looked for {kinds})")
    results, skipped = [], []
    for path in files:
        prompt_file = path.with_suffix(".txt")
        if not prompt_file.is_file():
            skipped.append({"file": path.name, "reason": f"no prompt file {prompt_file.name}"})
            continue
        try:
            video, _ = read_video(path)
        except VideoReadError as err:
            skipped.append({"file": path.name, "reason": str(err.reason)})
            continue
        prompt = prompt_file.read_text(encoding="utf-8", errors="replace").strip()
        results.append({"file": path.name, **evaluate_video(video, prompt, travel_frames)})
    return {"results": results, "accuracy": accuracies(results), "skipped": skipped}
