"""Checks of a generation request, before any work: one-line errors for values that cannot give a
meaningful video, one-line warnings for prompts the text encoder cannot read."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from pyramidflow.config import check_seed
from pyramidflow.errors import PyramidflowError, PyramidflowWarning

MAX_FRAMES = 1024  # frames of one call; a request beyond this is almost certainly a typo


class PromptWarning(PyramidflowWarning):
    """A prompt holds words the text encoder does not know (they are read as "unknown")."""


def prompt_list(prompt) -> list[str]:
    """One prompt or a sequence of them -> a non-empty list of strings."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise PyramidflowError("give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PyramidflowError(f"prompts must be strings; prompt {i} is {type(p).__name__} {p!r}")
    return prompts


def check_request(num_frames: int, guidance: float, video_guidance: float, seed) -> None:
    """Frames within :data:`MAX_FRAMES`, finite guidance scales, a seed in range."""
    if num_frames > MAX_FRAMES:
        raise PyramidflowError(f"num_frames={num_frames} is more than one call generates "
                               f"(at most {MAX_FRAMES})")
    for name, value in (("guidance_scale", guidance), ("video_guidance_scale", video_guidance)):
        if not math.isfinite(value):
            raise PyramidflowError(f"{name} must be a finite number, got {value}")
    if seed is not None:
        check_seed(seed)


def warn_unknown_words(text_encoder, prompts: Sequence[str]) -> None:
    """One warning naming the prompt words an encoder with a fixed vocabulary does not know (an
    encoder with one has ``split_vocabulary(prompt) -> (known words, unknown words)``)."""
    split = getattr(text_encoder, "split_vocabulary", None)
    if split is None:
        return
    unknown, nothing_known = [], False
    for prompt in prompts:
        known, missing = split(prompt)
        unknown += [w for w in missing if w not in unknown]
        nothing_known |= bool(missing) and not known
    if not unknown:
        return
    shown = ", ".join(repr(w) for w in unknown[:12]) + (", ..." if len(unknown) > 12 else "")
    tail = "; a prompt without a known word gives a video that follows no prompt" if nothing_known else ""
    warnings.warn(f"words unknown to this model's text encoder (ignored): {shown}{tail}", PromptWarning,
                  stacklevel=3)
