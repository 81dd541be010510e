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
        level = self.num_stages - 1 - stage
        frames = x.shape[2] // self.model.config.patch_size[0]  # token frames per unit
        hist = [TokenSegment.at_level(h.latent.to(x.dtype), 0.0, h.unit, h.level - level, h.unit * frames)
                for h in history]
        current = TokenSegment.at_level(x, sigma * self.timestep_scale, unit, 0, unit * frames)
        return hist, current

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
