"""The transformer as a velocity: the one place where a noise level becomes the model's timestep.

Convention (docs/maths.md section 1): sigma = 1 is noise, sigma = 0 is data, the network predicts
dx/dsigma and is conditioned on ``timestep = 1000 sigma`` (:func:`timestep_of`). Everything that
calls a transformer at a noise level goes through this module:

* :func:`call_model` -- a Wan-call-compatible model at natural level ``sigma`` (full sequences).
* :func:`unit_token_segments` -- the token segments of one autoregressive step (section 7), shared
  by training and sampling.
* :class:`UnitVelocity` -- ``(x, sigma, stage, history, unit) -> dx/dsigma`` for autoregressive
  generation, with the history cache (history keys/values computed once per unit and stage).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pyramidflow.models.segments import HistoryCache, TokenSegment

TIMESTEP_SCALE = 1000.0  # timestep = TIMESTEP_SCALE * sigma


def timestep_of(sigma: Tensor | float) -> Tensor | float:
    """The model's timestep for natural noise level ``sigma`` (a number or a tensor, kept in float32)."""
    if isinstance(sigma, Tensor):
        return (TIMESTEP_SCALE * sigma).to(torch.float32)
    return TIMESTEP_SCALE * float(sigma)


def call_model(model, x: Tensor, sigma: Tensor, text: Tensor) -> Tensor:
    """Velocity of ``model`` (called like diffusers' ``WanTransformer3DModel``) at ``x`` (B, C, T, H, W),
    natural level ``sigma`` (B,) and text embeddings ``text`` (B, L, D)."""
    out = model(hidden_states=x, timestep=timestep_of(sigma), encoder_hidden_states=text, return_dict=False)
    return out[0] if isinstance(out, (tuple, list)) else out


def unit_token_segments(history: Sequence, current: Tensor, sigma, unit: int, stage: int, num_stages: int,
                        patch_frames: int, history_sigma: float = 0.0
                        ) -> tuple[list[TokenSegment], TokenSegment]:
    """Token segments of one autoregressive step (docs/maths.md section 7).

    history: items with ``latent`` (B, C, F, h, w), ``level`` and ``unit`` (oldest first), e.g.
    :class:`pyramidflow.pyramid.temporal.HistoryUnit`; current: (B, C, F, H_i, W_i) at stage
    ``stage``, at natural level ``sigma`` (a number or (B,)). The current unit sits on its stage's
    integer grid (the reference grid), a history unit ``level - L_i`` levels coarser at its block
    centres on that grid; unit u starts at token frame ``u * F / patch_frames``. History is at
    ``history_sigma`` (0: clean, as sampling sees it).
    """
    level = num_stages - 1 - stage
    frames = current.shape[2] // patch_frames  # token frames per unit
    hist = [TokenSegment.at_level(h.latent.to(current.dtype), timestep_of(history_sigma), h.unit,
                                  h.level - level, h.unit * frames) for h in history]
    return hist, TokenSegment.at_level(current, timestep_of(sigma), unit, 0, unit * frames)


class UnitVelocity:
    """Callable ``(x, sigma, stage, history, unit) -> dx/dsigma`` backed by a :class:`PyramidDiT`.

    encoder_hidden_states: (B, L, text_dim) for the batch being generated. With ``use_cache`` the
    history keys/values are computed once per (unit, stage) and reused by every step.
    """

    def __init__(self, model, encoder_hidden_states: Tensor, num_stages: int, use_cache: bool = True) -> None:
        self.model, self.text, self.num_stages = model, encoder_hidden_states, num_stages
        self.use_cache = use_cache
        self._history: Sequence | None = None  # held, so its identity cannot be reused
        self._key: tuple[int, int] | None = None
        self._cache: HistoryCache | None = None

    def segments(self, x: Tensor, sigma: Tensor, stage: int, history: Sequence, unit: int
                 ) -> tuple[list[TokenSegment], TokenSegment]:
        return unit_token_segments(history, x, sigma, unit, stage, self.num_stages,
                                   self.model.config.patch_size[0])

    def __call__(self, x: Tensor, sigma: Tensor, stage: int, history: Sequence, unit: int) -> Tensor:
        hist, current = self.segments(x, sigma, stage, history, unit)
        if not hist:
            return self.model.forward_tokens([current], self.text)[0]
        if not self.use_cache:
            return self.model.forward_tokens([*hist, current], self.text)[-1]
        if history is not self._history or self._key != (unit, stage):
            self._cache = self.model.build_history_cache(hist, self.text)
            self._history, self._key = history, (unit, stage)
        return self.model.forward_tokens([current], self.text, cache=self._cache)[0]
