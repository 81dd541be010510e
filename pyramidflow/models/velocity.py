"""The transformer as a velocity: the one place where a noise level becomes the model's timestep.

Convention (docs/maths.md section 1): sigma = 1 is noise, sigma = 0 is data, the network predicts
dx/dsigma and is conditioned on ``timestep = 1000 sigma`` (:func:`timestep_of`). Everything that
calls a transformer at a noise level goes through this module:

* :func:`call_model` -- a Wan-call-compatible model at natural level ``sigma`` (full sequences).
* :class:`LazyTextCache` -- the text's cross-attention keys/values of a batch of prompts, computed
  once on first use and reused by every step (docs/maths.md section 13), for models that have them.
* :func:`unit_token_segments` -- the token segments of one autoregressive step (section 7), shared
  by training and sampling.
* :class:`UnitVelocity` -- ``(x, sigma, stage, history, unit) -> dx/dsigma`` for autoregressive
  generation, with the history cache (history keys/values computed once per unit and stage).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pyramidflow.models.lora import activate_stage, stage_adapters
from pyramidflow.models.segments import HistoryCache, TextCache, TokenSegment

TIMESTEP_SCALE = 1000.0  # timestep = TIMESTEP_SCALE * sigma


def timestep_of(sigma: Tensor | float) -> Tensor | float:
    """The model's timestep for natural noise level ``sigma`` (a number or a tensor, kept in float32)."""
    if isinstance(sigma, Tensor):
        return (TIMESTEP_SCALE * sigma).to(torch.float32)
    return TIMESTEP_SCALE * float(sigma)


def call_model(model, x: Tensor, sigma: Tensor, text: Tensor, text_cache: TextCache | None = None,
               patch_level: int | None = None, stage: int | None = None) -> Tensor:
    """Velocity of ``model`` (called like diffusers' ``WanTransformer3DModel``) at ``x`` (B, C, T, H, W),
    natural level ``sigma`` (B,) and text embeddings ``text`` (B, L, D); ``text_cache``: their
    keys/values (:meth:`PyramidDiT.build_text_cache`), and ``patch_level``: the patch level of a
    :class:`pyramidflow.models.ppf.PPFDiT` (docs/maths.md section 9), each passed on only when given;
    ``stage``: the pyramid stage of the call, which selects a model's per-stage LoRA adapter."""
    if stage is not None:
        activate_stage(model, stage)
    extra = {} if text_cache is None else {"text_cache": text_cache}
    if patch_level is not None:
        extra["patch_level"] = patch_level
    out = model(hidden_states=x, timestep=timestep_of(sigma), encoder_hidden_states=text, return_dict=False,
                **extra)
    return out[0] if isinstance(out, (tuple, list)) else out


class LazyTextCache:
    """The :class:`TextCache` of ``model`` for ``text`` (B, L, D), built on the first :meth:`get`.

    Built in the grad mode of that first call (no graph is kept when sampling under no_grad); a model
    without ``build_text_cache`` (e.g. diffusers' ``WanTransformer3DModel``) or ``enabled=False``
    gives None, i.e. recomputation at every call.
    """

    def __init__(self, model, text: Tensor, enabled: bool = True) -> None:
        self.model, self.text = model, text
        # per-stage LoRA adapters change the text's keys/values from stage to stage: no shared cache
        self.enabled = (enabled and callable(getattr(model, "build_text_cache", None))
                        and not stage_adapters(model))
        self._cache: TextCache | None = None

    def get(self, batch: int) -> TextCache | None:
        """The cache when it serves a call of ``batch`` samples (the text's own batch), else None."""
        if not self.enabled or batch != self.text.shape[0]:
            return None
        if self._cache is None:
            self._cache = self.model.build_text_cache(self.text)
        return self._cache


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
    history keys/values are computed once per (unit, stage) and reused by every step; with
    ``cache_text`` the text's keys/values once for the whole generation (:class:`LazyTextCache`).
    """

    def __init__(self, model, encoder_hidden_states: Tensor, num_stages: int, use_cache: bool = True,
                 cache_text: bool = True) -> None:
        self.model, self.text, self.num_stages = model, encoder_hidden_states, num_stages
        self.use_cache = use_cache
        self.text_cache = LazyTextCache(model, encoder_hidden_states, cache_text)
        self._history: Sequence | None = None  # held, so its identity cannot be reused
        self._key: tuple[int, int] | None = None
        self._cache: HistoryCache | None = None

    def segments(self, x: Tensor, sigma: Tensor, stage: int, history: Sequence, unit: int
                 ) -> tuple[list[TokenSegment], TokenSegment]:
        return unit_token_segments(history, x, sigma, unit, stage, self.num_stages,
                                   self.model.config.patch_size[0])

    def __call__(self, x: Tensor, sigma: Tensor, stage: int, history: Sequence, unit: int) -> Tensor:
        activate_stage(self.model, stage)
        hist, current = self.segments(x, sigma, stage, history, unit)
        text_cache = self.text_cache.get(x.shape[0])
        if not hist:
            return self.model.forward_tokens([current], self.text, text_cache=text_cache)[0]
        if not self.use_cache:
            return self.model.forward_tokens([*hist, current], self.text, text_cache=text_cache)[-1]
        if history is not self._history or self._key != (unit, stage):
            self._cache = self.model.build_history_cache(hist, self.text, text_cache=text_cache)
            self._history, self._key = history, (unit, stage)
        return self.model.forward_tokens([current], self.text, cache=self._cache, text_cache=text_cache)[0]
