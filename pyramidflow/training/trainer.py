"""The training loop, on ``accelerate``, for any :class:`TrainingMethod` (methods/base.py).

One step: for each phase the method names, every micro-batch of this process (the global batch
split over processes and accumulation) gives a loss; gradients are averaged over processes (or
reduce-scattered when sharded), clipped, the phase's optimizer and LR schedule step; then the EMA of
the trainable parameters is updated (docs/maths.md section 11).

Determinism: the data order is a seeded permutation per epoch, and every example's random draws
come from its own generator seeded by (seed, step, position in the global batch). A run is
therefore independent of the number of processes and of gradient accumulation, and resuming from a
checkpoint (models, EMA, optimizers, schedulers, RNG) continues bit-exactly on the CPU.

Outputs in ``out_dir``: ``checkpoint-STEP/`` (atomic, checksummed, the newest ``keep_last`` kept),
TensorBoard logs in ``logs/``, one JSON line per log step and per validation in ``metrics.jsonl``.

Safety: a run never writes over another run's checkpoints (:meth:`Trainer.train` refuses an
``out_dir`` holding checkpoints newer than its own step), removes the temporaries of saves that were
killed, resumes from the newest checkpoint that is not damaged, and on SIGINT / SIGTERM finishes the
step in flight, saves a checkpoint and raises :class:`TrainingInterrupted` (a second signal stops at
once with ``KeyboardInterrupt``; the checkpoint being written, if any, is discarded whole).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError, PyramidflowWarning
from pyramidflow.io.checkpoint import (
    LoadedCheckpoint,
    clean_stale_temporaries,
    list_checkpoints,
    load_checkpoint,
    load_newest,
    resolve_checkpoint,
    save_checkpoint,
)
from pyramidflow.training.config import LoopConfig, lr_lambda
from pyramidflow.training.distributed import (
    Sharding,
    Snapshot,
    average_gradients,
    broadcast_parameters,
    make_accelerator,
)
from pyramidflow.training.ema import EMA
from pyramidflow.training.methods.base import MicroBatch, TrainingMethod


class TrainingDiverged(RuntimeError):
    """A loss became non-finite; the message names the step and the last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a step and its checkpoint; ``signum``, ``step``, ``path``."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; saved {path}; "
                         "continue with --resume latest")


def example_generator(seed: int, step: int, index: int, device="cpu") -> torch.Generator:
    """The generator of one example of one step (independent of processes and accumulation; the seed
    wraps at 64 bits, which leaves every seed that fits unchanged)."""
    return torch.Generator(device=device).manual_seed(((seed * 1_000_003 + step) * 65_537 + index) % 2**64)


class Trainer:
    """Training loop with checkpoints, EMA, logging and resume; see the module docstring.

    ``Trainer(method, dataset, loop, out_dir).train()``; ``train(resume="latest")`` continues the
    newest checkpoint in ``out_dir``.
    """

    def __init__(self, method: TrainingMethod, dataset, loop: LoopConfig, out_dir: str | Path, *,
                 accelerator=None) -> None:
        if loop.batch_size < 1 or loop.grad_accum < 1 or loop.max_steps < 0:
            raise PyramidflowError("batch_size and grad_accum must be >= 1 and max_steps >= 0")
        if loop.parallel not in ("replicate", "fsdp"):
            raise PyramidflowError(f"unknown loop.parallel {loop.parallel!r}; valid: replicate, fsdp")
        if len(dataset) == 0:
            raise PyramidflowError("the training dataset is empty")
        self.method, self.dataset, self.loop, self.out_dir = method, dataset, loop, Path(out_dir)
        self.accelerator = acc = accelerator or make_accelerator(loop.mixed_precision)
        world = acc.num_processes
        if loop.batch_size % (world * loop.grad_accum):
            raise PyramidflowError(f"batch_size {loop.batch_size} must be divisible by processes x "
                                   f"grad_accum = {world} x {loop.grad_accum}")
        self.micro_batch = loop.batch_size // (world * loop.grad_accum)
        # Replicated modules are not wrapped in DistributedDataParallel: a step may make a different
        # number of forward passes on each process (one per stage present), which DDP's hooks cannot
        # follow. Gradients are averaged explicitly after the backward passes instead, the same
        # update. Sharded modules (``parallel: fsdp``) reduce-scatter in their backward pass.
        self.modules = {k: m.to(acc.device) for k, m in method.modules().items()}
        for m in method.frozen_modules().values():
            m.to(acc.device)
        if world > 1:
            broadcast_parameters(self.modules.values())  # every process starts from the main weights
        ema_roles = method.ema_roles() if loop.ema_decay > 0 else ()
        self.sharding = Sharding(self.modules, ema_roles) if loop.parallel == "fsdp" and world > 1 else None
        self.ema = EMA({k: self.modules[k] for k in ema_roles}, loop.ema_decay) if ema_roles else None
        self.optimizers, self.schedulers, self._params = {}, {}, {}
        for name, spec in method.optimizers().items():
            params = [p for role in spec.roles for p in self.modules[role].parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=spec.config.lr, betas=tuple(spec.config.betas),
                                    weight_decay=spec.config.weight_decay)
            self.optimizers[name], self._params[name] = opt, params
            schedule = lr_lambda(spec.config, loop.max_steps)
            self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        self._clip = {name: spec.config.grad_clip for name, spec in method.optimizers().items()}
        method.bind(self)
        self.step = 0
        self.train_seconds = 0.0  # wall-clock time spent in train_step by this process (this session)
        self._writer = None
        self._started = time.perf_counter()
        self._perm_cache: dict[int, list[int]] = {}
        self._signal: int | None = None  # SIGINT / SIGTERM received during train()

    # ------------------------------------------------------------------ data
    def _global_indices(self, step: int) -> list[int]:
        """Dataset indices of the global batch of ``step`` (a seeded permutation per epoch)."""
        n, b = len(self.dataset), self.loop.batch_size
        out = []
        for pos in range(step * b, (step + 1) * b):
            epoch, offset = divmod(pos, n)
            perm = self._perm_cache.get(epoch)
            if perm is None:
                gen = torch.Generator().manual_seed((self.loop.seed * 7919 + epoch) % 2**64)
                perm = torch.randperm(n, generator=gen).tolist()
                self._perm_cache = {epoch: perm}
            out.append(perm[offset])
        return out

    def _micro_batches(self, step: int) -> list[MicroBatch]:
        """This process's micro-batches of ``step``."""
        idx = self._global_indices(step)
        world, rank, m = self.accelerator.num_processes, self.accelerator.process_index, self.micro_batch
        out = []
        for a in range(self.loop.grad_accum):
            start = (a * world + rank) * m
            positions = list(range(start, start + m))
            out.append(MicroBatch(step, a, positions, [self.dataset[idx[j]] for j in positions],
                                  [example_generator(self.loop.seed, step, j) for j in positions]))
        return out

    # ------------------------------------------------------------- training
    def _check_finite(self, loss: Tensor, phase: str) -> None:
        if torch.isfinite(loss).all():
            return
        last = resolve_checkpoint(self.out_dir, "latest")
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(f"the {phase} loss became non-finite ({float(loss)}) at step {self.step + 1}; "
                               f"training stopped and {where}. Lower the learning rate or check the data.")

    def _sync_gradients(self, params: list) -> None:
        if self.accelerator.num_processes > 1 and self.sharding is None:
            average_gradients(params, self.accelerator.num_processes)

    def train_step(self) -> dict[str, float]:
        """One step: every phase over the global batch; returns the logged values."""
        acc, scale = self.accelerator, self.accelerator.num_processes / self.loop.batch_size
        for m in self.modules.values():
            m.train()
        batches = self._micro_batches(self.step)
        stats: dict[str, float] = {}
        logs: dict[str, list[float]] = {}
        for i, phase in enumerate(self.method.phases(self.step)):
            opt, params = self.optimizers[phase], self._params[phase]
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for batch in batches:
                with acc.autocast():
                    out = self.method.loss(phase, batch)
                local = out.total * scale  # global-batch normalised: processes and micro-batches add up
                self._check_finite(local.detach(), phase)
                acc.backward(local)
                total += float(local.detach())
                for key, (value, count) in out.logs.items():
                    entry = logs.setdefault(key, [0.0, 0])
                    entry[0], entry[1] = entry[0] + value, entry[1] + count
            self._sync_gradients(params)
            clip = self._clip[phase]
            if clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
                full = getattr(norm, "full_tensor", None)  # a DTensor when sharded
                stats["grad_norm" if i == 0 else f"grad_norm_{phase}"] = float(full() if full else norm)
            opt.step()
            self.schedulers[phase].step()
            if acc.num_processes > 1:
                total = float(acc.reduce(torch.tensor(total, device=acc.device), "mean"))
            stats["loss" if i == 0 else f"loss_{phase}"] = total
        for n, (name, sched) in enumerate(self.schedulers.items()):
            stats["lr" if n == 0 else f"lr_{name}"] = sched.get_last_lr()[0]
        if self.ema is not None:
            self.ema.update(self.modules, self.step)
        self.step += 1
        stats.update({k: v / max(c, 1) for k, (v, c) in logs.items()})
        return stats

    # ------------------------------------------------------------ checkpoint
    @contextmanager
    def sampling_modules(self, gather: bool = True) -> Iterator[dict[str, torch.nn.Module]]:
        """Whole modules holding the EMA weights (the live ones without EMA) for the block. When
        sharded these are the main process's copies, gathered first (a collective; ``gather=False``
        on the main process alone: the copies as of the last checkpoint)."""
        if self.sharding is not None:
            if gather:
                self.sharding.gather(self.ema)
            copies = {**self.sharding.copies, **self.sharding.ema_copies}
            for m in copies.values():
                m.to(self.accelerator.device)
            try:
                yield copies
            finally:
                for m in copies.values():
                    m.cpu()
            return
        with self.ema.applied(self.modules) if self.ema is not None else nullcontext():
            yield self.modules

    def save(self) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if self.sharding is not None:  # whole tensors on the main process, the unsharded layout
            self.sharding.gather(self.ema)
            models, ema = self.sharding.copies, self.sharding.ema_copies
            optimizers = {k: Snapshot(self.sharding.gather_optimizer(o)) for k, o in self.optimizers.items()}
        else:
            models, optimizers = self.modules, self.optimizers
            ema = {k: self.ema.averaged_copy(k, models[k]) for k in self.ema.names} if self.ema else {}
        if acc.is_main_process:
            extra = {"seed": self.loop.seed, "processes": acc.num_processes, "parallel": self.loop.parallel,
                     **self.method.checkpoint_extra()}
            path = save_checkpoint(self.out_dir, self.step, models, optimizers=optimizers,
                                   schedulers=self.schedulers, ema=ema,
                                   data_position=self.step * self.loop.batch_size, extra=extra,
                                   keep_last=self.loop.keep_last)
        acc.wait_for_everyone()
        return path

    def resume(self, which: str = "latest") -> int:
        """Restore from ``out_dir`` (``latest``: the newest checkpoint that is not damaged, warning
        about any passed over) or a checkpoint path; returns the step."""
        if which == "latest":
            found = load_newest(self.out_dir, self._load)
            if found is None:
                if self.accelerator.is_main_process:
                    warnings.warn(f"nothing to resume in {self.out_dir} (no checkpoint-STEP folder): "
                                  "starting a new run", PyramidflowWarning, stacklevel=2)
                return self.step
            path, loaded = found
        else:
            path = resolve_checkpoint(self.out_dir, which)
            loaded = self._load(path)
        self.step = loaded.step
        if self.accelerator.is_main_process:
            print(f"resumed from {path} at step {self.step}")
        return self.step

    def _load(self, path: Path) -> LoadedCheckpoint:
        """Every state of the run from one checkpoint (verified against its checksums first)."""
        if self.sharding is None:
            ema = {k: self.ema.averaged_copy(k, self.modules[k]) for k in self.ema.names} if self.ema else {}
            loaded = load_checkpoint(path, self.modules, self.optimizers, self.schedulers, ema, rng=True)
            for name, module in ema.items():
                self.ema.load_from(name, module)
            return loaded
        # sharded: the main process reads whole tensors, then they are sent to the shards
        main = self.accelerator.is_main_process
        snaps = {k: Snapshot(None) for k in self.optimizers}
        loaded = load_checkpoint(path, self.sharding.copies, snaps if main else {}, self.schedulers,
                                 self.sharding.ema_copies, rng=True)
        self.sharding.scatter(self.ema)
        for name, opt in self.optimizers.items():
            self.sharding.scatter_optimizer(opt, snaps[name].state)
        return loaded

    def _check_owner(self) -> None:
        """Refuse to run where checkpoints of another run (newer than this run's step) lie: saving and
        pruning would mix the two runs and lose this one."""
        foreign = [path for step, path in list_checkpoints(self.out_dir) if step > self.step or not self.step]
        if foreign:
            raise PyramidflowError(
                f"{self.out_dir} holds checkpoints of another run ({foreign[-1].name}; this run is at step "
                f"{self.step}): continue that run with --resume latest, replace it with --overwrite, or "
                "choose another output folder")

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """While training, SIGINT / SIGTERM ask the loop to stop after the step in flight; a second one
        raises ``KeyboardInterrupt`` at once. (Only in the main thread, where Python runs handlers.)"""
        self._signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        wanted = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in wanted}

        def handler(signum, frame):
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = signum

        for s in wanted:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_signal(self) -> int:
        """The signal that asked this run to stop (0 if none), agreed by every process."""
        value = self._signal or 0
        if self.accelerator.num_processes > 1:
            flag = torch.tensor(value, device=self.accelerator.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            value = int(flag)
        return value

    # ------------------------------------------------------------------ loop
    def log(self, values: Mapping[str, float], prefix: str = "train") -> None:
        """TensorBoard (``prefix/KEY``) and one line of ``metrics.jsonl`` (main process)."""
        if not self.accelerator.is_main_process:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.out_dir / "logs"))
        record: dict[str, Any] = {"step": self.step,
                                  "minutes": round((time.perf_counter() - self._started) / 60, 3)}
        for key, value in values.items():
            name = key if prefix == "train" else f"{prefix}/{key}"
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"{prefix}/{key}", value, self.step)
            record[name] = value
        with open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def train(self, resume: str | None = None, max_steps: int | None = None) -> dict:
        """Train to ``max_steps`` (default: the loop's); returns the last step's stats and what the
        method's ``finish`` reports. ``resume``: ``latest`` or a checkpoint path (see :meth:`resume`)."""
        loop, acc = self.loop, self.accelerator
        started = time.perf_counter()
        if acc.is_main_process:
            clean_stale_temporaries(self.out_dir)  # of saves that were killed; they may fill the disk
        acc.wait_for_everyone()
        with self._signals():
            if resume:
                self.resume(resume)
            self._check_owner()
            stats = self._loop(loop.max_steps if max_steps is None else max_steps)
        if self.step and (not loop.checkpoint_every or self.step % loop.checkpoint_every):
            self.save()
        if not (loop.validate_every and self.step % loop.validate_every == 0):
            self.validate()
        stats["seconds"] = time.perf_counter() - started
        if acc.is_main_process:
            stats.update(self.method.finish(self))
        if self._writer is not None:
            self._writer.flush()
        return stats

    def _loop(self, target: int) -> dict:
        """Steps up to ``target`` (or ``loop.max_minutes``) with periodic checkpoints and validation;
        a stop signal ends it with a checkpoint and :class:`TrainingInterrupted`."""
        from tqdm.auto import tqdm

        loop, acc = self.loop, self.accelerator
        bar = tqdm(total=target, initial=self.step, disable=not (loop.progress and acc.is_main_process),
                   desc="train", dynamic_ncols=True)
        stats: dict = {}
        deadline = time.perf_counter() + 60.0 * loop.max_minutes if loop.max_minutes > 0 else float("inf")
        while self.step < target and time.perf_counter() < deadline:
            tick = time.perf_counter()
            stats = self.train_step()
            self.train_seconds += time.perf_counter() - tick
            bar.update(1)
            if self.step % max(1, loop.log_every) == 0 or self.step == target:
                self.log(stats)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
            stop = self._stop_signal()
            if stop or (loop.checkpoint_every and self.step % loop.checkpoint_every == 0):
                self.save()
            if stop:
                bar.close()
                raise TrainingInterrupted(stop, self.step, self.out_dir / f"checkpoint-{self.step}")
            if loop.validate_every and self.step % loop.validate_every == 0:
                self.validate()
        bar.close()
        return stats

    def validate(self) -> dict | None:
        """The method's validation with the EMA weights, logged under ``val/`` (main process)."""
        result = None
        with self.sampling_modules() as modules:
            if self.accelerator.is_main_process:
                result = self.method.validate(self, self.step, modules)
                if result:
                    self.log(result, prefix="val")
        self.accelerator.wait_for_everyone()
        return result
