"""Training over several processes: replicated (``loop.parallel: replicate``) or fully sharded
(``fsdp``, PyTorch's FSDP2 ``fully_shard``).

Replicated: every process holds the whole modules; they start from the main process's weights
(:func:`broadcast_parameters`) and average their gradients in one flat all-reduce
(:func:`average_gradients`), the update DistributedDataParallel would make.

Sharded: with more than one process every trainable module (and so its EMA, made from the shards) is
sharded over the processes:
each transformer block is one FSDP unit and the rest of the module another, so parameters,
gradients and the AdamW moments are held in 1/world shards and a block's full weights exist only
while it runs. FSDP's gradient reduce-scatter averages over processes, the same update as the
replicated path's all-reduce (:meth:`Trainer._sync_gradients`).

Checkpoints keep the ordinary, unsharded layout (diffusers folders and an index-keyed optimizer
state, :mod:`pyramidflow.io.checkpoint`): :meth:`Sharding.gather` collects full tensors one
at a time into CPU copies of the modules on the main process, and :meth:`Sharding.scatter` sends a
checkpoint loaded there back into the shards. A sharded run therefore resumes an unsharded
checkpoint and the other way round, and validation samples from the gathered EMA copy.

Every method here except the accessors is a collective: all processes call it, in the same order.
Costs: the main process holds full CPU copies of the weights and of the EMA roles; every process
briefly holds the full weights on its device before sharding (the modules are built whole).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

# entry points besides forward (the transformer's, text encoders'): they gather the weights too
ENTRY_METHODS = ("forward_packed", "forward_tokens", "build_history_cache", "encode")
SHARD = "<sent as shards>"  # stands for an optimizer tensor in the layout broadcast by scatter_optimizer


def make_accelerator(mixed_precision: str = "auto"):
    """An ``accelerate.Accelerator`` for this launch. ``auto``: bf16 on CUDA, none elsewhere. On a
    machine without CUDA it is made with ``cpu=True``, without which accelerate ignores a torchrun
    launch and every process would train alone."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "bf16" if cuda else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=not cuda)


def broadcast_parameters(modules: Iterable[nn.Module]) -> None:
    """Overwrite every process's parameters and buffers with the main process's."""
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, src=0)


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average ``.grad`` over processes in one flat all-reduce; a missing grad counts as 0."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def shard_module(module: nn.Module) -> None:
    """FSDP2-shard ``module`` in place: one unit per entry of ``module.blocks`` (if any), one root."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in getattr(module, "blocks", ()):
        fully_shard(block)
    fully_shard(module)
    for method in ENTRY_METHODS:
        if callable(getattr(module, method, None)):
            register_fsdp_forward_method(module, method)


def _tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(state-dict key, live parameter or buffer) in state-dict order."""
    live = dict(module.named_parameters()) | dict(module.named_buffers())
    for key in module.state_dict():
        yield key, live[key]


def _full(t: Tensor) -> Tensor:
    """The whole tensor (an all-gather for a shard); collective for a DTensor."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _send(like: Tensor, full: Tensor | None) -> Tensor:
    """Distribute ``full`` (given on the main process only) in the layout of ``like``."""
    src = full if full is not None else torch.empty(like.shape, dtype=like.dtype)
    if isinstance(like, DTensor):
        src = src.to(like.device_mesh.device_type, like.dtype)
        return distribute_tensor(src, like.device_mesh, like.placements, src_data_rank=0)
    src = src.to(like.device, like.dtype)
    dist.broadcast(src, src=0)
    return src


class Sharding:
    """The sharded trainable modules and the main process's CPU copies of them and of their EMA."""

    def __init__(self, modules: Mapping[str, nn.Module], ema_roles: Iterable[str] = ()) -> None:
        self.main = dist.get_rank() == 0
        self.modules = dict(modules)
        # CPU copies (main process only), made before sharding: what checkpoints and validation see
        self.copies = {k: copy.deepcopy(m).cpu() for k, m in self.modules.items()} if self.main else {}
        self.ema_copies = {k: copy.deepcopy(self.modules[k]).cpu() for k in ema_roles} if self.main else {}
        for m in self.modules.values():
            shard_module(m)

    # ------------------------------------------------------------ weights
    def _pairs(self, ema) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(live tensor, its main-process CPU copy or None) for every weight and EMA average, in the
        same order on every process. ``ema``: a :class:`pyramidflow.training.ema.EMA` or None."""
        for name, module in self.modules.items():
            copy_of = dict(_tensors(self.copies[name])) if self.main else {}
            for key, t in _tensors(module):
                yield t, copy_of.get(key)
        for name, averages in (ema.shadow.items() if ema is not None else ()):
            copy_of = dict(self.ema_copies[name].named_parameters()) if self.main else {}
            for key, t in averages.items():
                yield t, copy_of[key].data if self.main else None

    @torch.no_grad()
    def gather(self, ema=None) -> None:
        """Copy the sharded weights (and EMA averages) into the main process's CPU copies."""
        for t, target in self._pairs(ema):
            full = _full(t.detach())  # collective for a shard
            if target is not None:
                target.copy_(full.cpu())

    @torch.no_grad()
    def scatter(self, ema=None) -> None:
        """Load the main process's CPU copies (e.g. just read from a checkpoint) into the shards."""
        for t, source in self._pairs(ema):
            t.copy_(_send(t, source))

    # ---------------------------------------------------------- optimizer
    @staticmethod
    def gather_optimizer(opt: torch.optim.Optimizer) -> dict | None:
        """The optimizer's state with whole tensors, as an unsharded run's ``state_dict()`` (main
        process; None elsewhere)."""
        main, sd, state = dist.get_rank() == 0, opt.state_dict(), {}
        for index in sorted(sd["state"]):
            entry = {}
            for key, value in sd["state"][index].items():
                full = _full(value) if isinstance(value, Tensor) else value  # collective for shards
                entry[key] = full.cpu() if isinstance(full, Tensor) else full
            if main:
                state[index] = entry
        return {"state": state, "param_groups": sd["param_groups"]} if main else None

    @staticmethod
    def scatter_optimizer(opt: torch.optim.Optimizer, full: dict | None) -> None:
        """Load an unsharded optimizer ``state_dict`` given on the main process into every shard.
        Entries shaped like their parameter (AdamW's moments) are sent as shards; the rest (the
        step count) travel whole with the state's layout."""
        params = [p for group in opt.param_groups for p in group["params"]]
        layout = [None]
        if dist.get_rank() == 0:
            def spec(value, param):
                sharded = isinstance(value, Tensor) and tuple(value.shape) == tuple(param.shape)
                return SHARD if sharded else value

            state = {i: {k: spec(v, params[i]) for k, v in s.items()} for i, s in full["state"].items()}
            layout[0] = {"param_groups": full["param_groups"], "state": state}
        dist.broadcast_object_list(layout, src=0)
        state = {}
        for index, entries in layout[0]["state"].items():
            param = params[index].detach()
            state[index] = {key: _send(param, full["state"][index][key] if full is not None else None)
                            if isinstance(value, str) and value == SHARD else value
                            for key, value in entries.items()}
        opt.load_state_dict({"state": state, "param_groups": layout[0]["param_groups"]})


class Snapshot:
    """A state dict standing in for an optimizer when saving or loading a checkpoint."""

    def __init__(self, state: dict | None) -> None:
        self.state = state

    def state_dict(self) -> dict | None:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state = state
