"""PyramidDiT as the velocity of autoregressive unit generation, with the history cache.

``pyramidflow.pipelines.autoregressive.generate_units`` calls
``unit_velocity(x, sigma, stage, history, unit)`` at every step, handing the same compressed
``history`` list (items with ``latent``, ``level``, ``unit``) to every step of a stage. Positions
follow MATH.md section 7: the current unit sits on its own stage's integer grid (extrapolated),
a history unit ``d`` levels coarser sits at its block centres on that grid (interpolated); time
advances by the unit's token frames. History is clean at inference: timestep 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from pyramidflow.models.segments import HistoryCache, TokenSegment
from pyramidflow.models.transformer import PyramidDiT


def unit_segments(history: Sequence, current: Tensor, timestep, unit: int, stage: int, num_stages: int,
                  patch_frames: int, history_timestep: float = 0.0
                  ) -> tuple[list[TokenSegment], TokenSegment]:
    """Token segments of one autoregressive step (MATH.md section 7), shared by training and sampling.

    history: items with ``latent`` (B, C, F, h, w), ``level`` and ``unit`` (oldest first), e.g.
    :class:`pyramidflow.pyramid.temporal.HistoryUnit`; current: (B, C, F, H_i, W_i) at stage
    ``stage``. The current unit sits on its stage's integer grid (the reference grid), a history unit
    ``level - L_i`` levels coarser at its block centres on that grid; unit u starts at token frame
    ``u * F / patch_frames``. History carries ``history_timestep`` (0: clean).
    """
    level = num_stages - 1 - stage
    frames = current.shape[2] // patch_frames  # token frames per unit
    hist = [TokenSegment.at_level(h.latent.to(current.dtype), history_timestep, h.unit, h.level - level,
                                  h.unit * frames) for h in history]
    return hist, TokenSegment.at_level(current, timestep, unit, 0, unit * frames)


class UnitVelocity:
    """Callable ``(x, sigma, stage, history, unit) -> dx/dsigma`` backed by a :class:`PyramidDiT`.

    encoder_hidden_states: (B, L, text_dim) for the batch being generated. With ``use_cache`` the
    history keys/values are computed once per (unit, stage) and reused by every step.
    """

    def __init__(self, model: PyramidDiT, encoder_hidden_states: Tensor, num_stages: int,
                 timestep_scale: float = 1000.0, use_cache: bool = True) -> None:
        self.model, self.text, self.num_stages = model, encoder_hidden_states, num_stages
        self.timestep_scale, self.use_cache = timestep_scale, use_cache
        self._history: Sequence | None = None  # held, so its identity cannot be reused
        self._key: tuple[int, int] | None = None
        self._cache: HistoryCache | None = None

    def segments(self, x: Tensor, sigma: Tensor, stage: int, history: Sequence, unit: int
                 ) -> tuple[list[TokenSegment], TokenSegment]:
        return unit_segments(history, x, sigma * self.timestep_scale, unit, stage, self.num_stages,
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
