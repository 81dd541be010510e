"""Exponential moving average of the trainable parameters (docs/maths.md section 11).

Only parameters with ``requires_grad`` are averaged: for a LoRA finetune that is the adapter, not
the frozen base, whose average is the base itself. The averages live beside the live parameters
(same device, same sharding under FSDP). Update after optimiser step n:

    ema <- d_n ema + (1 - d_n) theta,    d_n = min(decay, (1 + n) / (10 + n)),

the warm-up keeping the random initial weights from lingering in the average.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay after ``step`` updates: min(decay, (1 + step) / (10 + step)).

    Without the warm-up the initial random weights would keep a share decay^n of the average (55%
    after 600 steps at 0.999); with it the average forgets them within the first few hundred steps.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {k: p for k, p in module.named_parameters() if p.requires_grad}


class EMA:
    """Moving averages of the trainable parameters of named modules.

    ``shadow[name][param_name]`` is the average of ``modules[name]``'s parameter (a tensor like it).
    """

    def __init__(self, modules: Mapping[str, nn.Module], decay: float) -> None:
        self.decay = float(decay)
        self.shadow: dict[str, dict[str, Tensor]] = {
            name: {k: p.detach().clone() for k, p in _trainable(m).items()} for name, m in modules.items()
        }

    @property
    def names(self) -> list[str]:
        return list(self.shadow)

    @torch.no_grad()
    def update(self, modules: Mapping[str, nn.Module], step: int) -> None:
        """One update with the decay of ``step`` (the number of updates made before this one)."""
        weight = 1.0 - ema_decay_at(self.decay, step)
        for name, averages in self.shadow.items():
            live = _trainable(modules[name])
            torch._foreach_lerp_(list(averages.values()), [live[k].detach() for k in averages], weight)

    @contextmanager
    def applied(self, modules: Mapping[str, nn.Module]) -> Iterator[None]:
        """Within the block the modules hold the averages (swapped in place, no copy)."""
        swapped = []
        for name, averages in self.shadow.items():
            live = _trainable(modules[name])
            for key, avg in averages.items():
                param = live[key]
                param.data, averages[key] = avg, param.data
                swapped.append((param, averages, key))
        try:
            yield
        finally:
            for param, averages, key in swapped:
                param.data, averages[key] = averages[key], param.data

    @torch.no_grad()
    def copy_to(self, name: str, module: nn.Module) -> nn.Module:
        """Write the averages of ``name`` into ``module`` (a module of the same layout); returns it."""
        live = _trainable(module)
        for key, avg in self.shadow[name].items():
            live[key].copy_(avg.to(live[key].device))
        return module

    def averaged_copy(self, name: str, module: nn.Module) -> nn.Module:
        """A copy of ``module`` holding the averages (for checkpoints: the ``ema_NAME`` folder)."""
        return self.copy_to(name, copy.deepcopy(module))

    @torch.no_grad()
    def load_from(self, name: str, module: nn.Module) -> None:
        """Take the averages of ``name`` from ``module`` (e.g. the ``ema_NAME`` folder of a checkpoint)."""
        live = _trainable(module)
        for key, avg in self.shadow[name].items():
            avg.copy_(live[key].detach().to(avg.device))
