"""Evaluation without learned weights: judge shapes clips against their prompts and check that
the object stays one whole, steady thing on one bouncing path (:func:`evaluate_video`), and compare
sets of clips with a descriptor Fréchet distance (:func:`frechet_video_distance`). Imports no model
code; see docs/evaluation.md.
"""

from pyramidflow.eval.evaluator import accuracies, describe_video, evaluate_folder, evaluate_video
from pyramidflow.eval.frechet import (
    DESCRIPTOR_NAMES,
    clip_descriptor,
    descriptor_stats,
    frechet_distance,
    frechet_video_distance,
)
from pyramidflow.eval.report import score_clips

__all__ = [
    "DESCRIPTOR_NAMES",
    "accuracies",
    "clip_descriptor",
    "describe_video",
    "descriptor_stats",
    "evaluate_folder",
    "evaluate_video",
    "frechet_distance",
    "frechet_video_distance",
    "score_clips",
]
