"""Classifier-free guidance around a Wan-call-compatible transformer, as a velocity function
(docs/maths.md section 10).

v = v_uncond + w (v_cond - v_uncond), evaluated in one batched call. The scale may differ for the
first frame (an image-like frame, Pyramid Flow's ``guidance_scale``) and later frames
(``video_guidance_scale``); frame 0 stays frame 0 at every level of a spatial or causal-first-frame
pyramid, so the split is exact there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.velocity import LazyTextCache, call_model
from pyramidflow.pyramid import HaarTransform
from pyramidflow.pyramid.sampler import VelocityFn
from pyramidflow.pyramid.temporal import HistoryUnit


def frame_scales(num_frames: int, first: float, rest: float, transform: HaarTransform, device=None) -> Tensor:
    """(1, 1, T, 1, 1) guidance scales: ``first`` on frame 0 where it is its own frame, else ``rest``."""
    scales = torch.full((num_frames,), float(rest), device=device)
    keeps_first = transform.causal_first_frame or not transform.temporal
    if keeps_first and num_frames > 0:
        scales[0] = float(first)
    return scales.view(1, 1, -1, 1, 1)


def guided_velocity(
    model,
    text: Tensor,
    null_text: Tensor | None = None,
    guidance: float = 1.0,
    first_frame_guidance: float | None = None,
    transform: HaarTransform | None = None,
    cache_text: bool = True,
    patchify: bool = False,
) -> VelocityFn:
    """A ``velocity_fn(x, sigma, stage)`` for :func:`pyramidflow.pyramid.sample`.

    ``text`` (B, L, D) conditions; ``null_text`` (B or 1, L, D) is the unconditional embedding
    (needed whenever a scale differs from 1). ``first_frame_guidance`` defaults to ``guidance``.
    With ``cache_text`` the text's cross-attention keys/values (of the doubled batch under guidance)
    are computed at the first call and reused by every later one (a model with ``build_text_cache``).
    With ``patchify`` (a patchification pyramid, docs/maths.md section 9) stage i runs the model at
    patch level i (:class:`pyramidflow.models.ppf.PPFDiT`); with guidance 1 this is the plain
    per-stage velocity of such a model, one pass per call.
    """
    first = guidance if first_frame_guidance is None else first_frame_guidance
    transform = transform or HaarTransform()
    needs_uncond = guidance != 1.0 or first != 1.0
    if needs_uncond and null_text is None:
        raise PyramidflowError("classifier-free guidance needs null_text (the empty-prompt embedding)")
    if needs_uncond:
        null = null_text.expand(text.shape[0], -1, -1) if null_text.shape[0] == 1 else null_text
        if null.shape != text.shape:
            raise PyramidflowError(
                f"null_text shape {tuple(null.shape)} does not match text {tuple(text.shape)}"
            )
        both = torch.cat([null, text], 0)
    cache = LazyTextCache(model, both if needs_uncond else text, cache_text)

    def velocity(x: Tensor, sigma: Tensor, stage: int) -> Tensor:
        level = int(stage) if patchify else None
        if not needs_uncond:
            return call_model(model, x, sigma, text, cache.get(x.shape[0]), level, stage).to(x.dtype)
        out = call_model(model, torch.cat([x, x], 0), torch.cat([sigma, sigma], 0), both,
                         cache.get(2 * x.shape[0]), level, stage)
        v_u, v_c = out.to(x.dtype).chunk(2, 0)
        w = frame_scales(x.shape[2], first, guidance, transform, x.device).to(x.dtype)
        return v_u + w * (v_c - v_u)

    return velocity


class GuidedUnitVelocity:
    """Classifier-free guidance around a unit velocity whose text batch is ``cat([null, cond])``.

    ``inner(x, sigma, stage, history, unit)`` is e.g. a :class:`pyramidflow.models.UnitVelocity`
    built with the doubled text. Both branches see the same clean history (text-only guidance, as
    Pyramid Flow). Unit 0 is guided with ``first`` (it is generated like an image), later units with
    ``rest``. The doubled history is built once per history list, so the inner history cache holds.
    """

    def __init__(self, inner, first: float, rest: float) -> None:
        self.inner, self.first, self.rest = inner, float(first), float(rest)
        self._source: list | None = None
        self._doubled: list = []

    def __call__(self, x: Tensor, sigma: Tensor, stage: int, history, unit: int) -> Tensor:
        if history is not self._source:
            self._source = history
            self._doubled = [HistoryUnit(torch.cat([h.latent, h.latent]), h.level, h.unit) for h in history]
        out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), stage, self._doubled, unit)
        v_u, v_c = out.to(x.dtype).chunk(2, 0)
        w = self.first if unit == 0 else self.rest
        return v_u + w * (v_c - v_u)
