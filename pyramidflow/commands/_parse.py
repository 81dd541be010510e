"""Small argument parsers shared by subcommands."""

from __future__ import annotations

import re

from pyramidflow.errors import PyramidflowError


def int_list(text: str, name: str = "steps", allow_zero: bool = False) -> tuple[int, ...]:
    """'20,20,10' or '20-20-10' -> (20, 20, 10)."""
    parts = [p for p in re.split(r"[,\-\s]+", text.strip()) if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise PyramidflowError(f"--{name} must be integers like 20,20,10, got {text!r}") from None
    low = 0 if allow_zero else 1
    if not values or any(v < low for v in values):
        raise PyramidflowError(f"--{name} needs integers >= {low}, got {text!r}")
    return values


def float_list(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in re.split(r"[,\s]+", text.strip()) if p)
    except ValueError:
        raise PyramidflowError(f"--{name} must be numbers like 0.6,0.3,0, got {text!r}") from None
