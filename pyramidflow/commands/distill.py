"""``pyramidflow distill``: distil a pyramidal (or single-stage) model to a few steps
(docs/distillation.md)."""

from __future__ import annotations

import argparse

from pyramidflow.commands._parse import add_run_arguments, run_from_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="distil a model to a few steps per stage (DMD or adversarial)",
        description="Distil a teacher pipeline into a few-step student (e.g. 2-2-1) by distribution "
        "matching (method: dmd; a critic learns the student's samples, the teacher is the real score) or "
        "adversarially on frozen teacher features (method: adversarial). Writes OUT/config.yaml, "
        "OUT/checkpoint-STEP/ (student, critic or discriminator, EMA, optimizers, RNG), OUT/samples/ "
        "(validation clips and evaluator scores) and the student in OUT/pipeline, whose saved sampling "
        "defaults are the few-step schedule. --resume latest continues a run.",
    )
    add_run_arguments(p, "configs/distill-dmd-pt.yaml", "dmd.ratio=5")
    p.add_argument("--no-validate", action="store_true", help="skip validation sampling")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidflow.training.distill import DistillConfig, distill_from_config

    return run_from_config(args, DistillConfig, "distill", distill_from_config)
