"""One generation over several processes: Ulysses sequence parallelism or CFG parallelism.

Launch with ``torchrun --nproc_per_node N`` (every process runs the same pipeline call with the same
seed, so all hold the same noise and the same sampling state):

* ``ulysses``: every transformer call shards its token sequence over the N processes
  (:func:`pyramidflow.models.parallel.enable_ulysses`, diffusers' context-parallel hooks and
  all-to-all around pyramidflow's block-causal attention). The number of heads must divide by N.
* ``cfg``: every transformer call splits its batch over the processes (:class:`BatchSplit`). Under
  classifier-free guidance the batch is ``cat([null, cond])`` (docs/maths.md section 10), so with two
  processes one evaluates the unconditional half and the other the conditional half; the velocities
  are all-gathered and combined as on one process. Without guidance the prompts themselves are split.

Both give every process the result of one process up to float rounding. Only the main process
should write files (the command does so).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.parallel import enable_ulysses

PARALLEL_MODES = ("none", "ulysses", "cfg")


def init_processes(device: torch.device) -> torch.device:
    """Join the torchrun launch this process belongs to (NCCL for CUDA, gloo otherwise); returns the
    process's device (``cuda:LOCAL_RANK`` for CUDA). A clear error outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        raise PyramidflowError("--parallel needs several processes: launch with "
                               "torchrun --nproc_per_node N -m pyramidflow sample ...")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def close_processes() -> None:
    """Leave the launch, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def enable_parallel(pipe, mode: str) -> None:
    """Set ``pipe`` (a :class:`PyramidFlowPipeline`) to run over the launched processes in ``mode``."""
    if mode not in PARALLEL_MODES:
        raise PyramidflowError(f"unknown parallel mode {mode!r}: valid are {', '.join(PARALLEL_MODES)}")
    if mode != "none" and not dist.is_initialized():
        raise PyramidflowError(f"parallel mode {mode!r} needs torch.distributed initialised "
                               "(launch with torchrun --nproc_per_node N)")
    if mode == "ulysses":
        enable_ulysses(pipe.transformer)
    pipe.parallel = mode


class BatchSplit:
    """A transformer whose every call is split along the batch over the processes of ``group``.

    Process r evaluates the r-th of N equal parts of the batch; outputs are all-gathered in order,
    so callers see the whole batch. Serves ``__call__`` (Wan's call), ``forward_tokens``,
    ``build_history_cache`` and ``build_text_cache``; the caches it returns hold this process's part
    and are passed back whole to the calls above.
    """

    def __init__(self, model, group=None) -> None:
        self.model, self.group = model, group if group is not None else dist.group.WORLD
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)

    @property
    def config(self):
        return self.model.config

    def _part(self, x, batch: int):
        """This process's part of x when x carries the batch (first dimension ``batch``)."""
        if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[0] != batch:
            return x
        if batch % self.world:
            raise PyramidflowError(f"--parallel cfg splits each batch over {self.world} processes: a batch "
                                   f"of {batch} does not split (use guidance, or a multiple of "
                                   f"{self.world} prompts)")
        return x.chunk(self.world)[self.rank]

    def _gather(self, x: Tensor) -> Tensor:
        """(B / N, ...) parts of every process -> (B, ...) in process order."""
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts)

    def _segments(self, segments):
        batch = segments[0].latent.shape[0]
        return [dataclasses.replace(s, latent=self._part(s.latent, batch),
                                    timestep=self._part(s.timestep, batch)) for s in segments]

    def __call__(self, hidden_states: Tensor, timestep, encoder_hidden_states: Tensor | None,
                 return_dict: bool = True, **kwargs):
        b = hidden_states.shape[0]
        out = self.model(hidden_states=self._part(hidden_states, b), timestep=self._part(timestep, b),
                         encoder_hidden_states=self._part(encoder_hidden_states, b), return_dict=False,
                         **kwargs)
        out = self._gather(out[0] if isinstance(out, (tuple, list)) else out)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def forward_tokens(self, segments, encoder_hidden_states, cache=None, text_cache=None) -> list[Tensor]:
        b = segments[0].latent.shape[0]
        outs = self.model.forward_tokens(self._segments(segments), self._part(encoder_hidden_states, b),
                                         cache=cache, text_cache=text_cache)
        return [self._gather(o) for o in outs]

    def build_history_cache(self, segments, encoder_hidden_states, text_cache=None):
        b = segments[0].latent.shape[0]
        return self.model.build_history_cache(self._segments(segments), self._part(encoder_hidden_states, b),
                                              text_cache=text_cache)

    def build_text_cache(self, encoder_hidden_states: Tensor):
        return self.model.build_text_cache(self._part(encoder_hidden_states, encoder_hidden_states.shape[0]))
