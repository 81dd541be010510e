"""The pyramidal flow-matching trainer (MATH.md section 6), on ``accelerate``.

Components are injected, so one loop serves every model of the project:

* ``model``: a transformer called like ``WanTransformer3DModel`` (a ``ModelMixin``).
* ``encode_text(prompts) -> (B, L, D)``: the text embeddings. Modules passed in
  ``extra_trainable`` (e.g. an embedded text encoder) are optimised, checkpointed and EMA'd too.
* ``dataset[i] -> {"video": (T, 3, H, W) in [0, 1], "text": str}``.
* ``to_model_space(video (B, T, 3, H, W)) -> x0 (B, C, T', H', W')``: pixels or VAE latents.

Determinism: the data order is a seeded permutation per epoch, and every example's random draws
(stage, position, noise, text dropout) come from its own generator seeded by (seed, step, index in
the global batch). A run is therefore independent of the number of processes and of gradient
accumulation, and resuming from a checkpoint continues bit-exactly on the CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.training.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from pyramidflow.training.distributed import (
    Sharding,
    Snapshot,
    average_gradients,
    broadcast_parameters,
    make_accelerator,
)
from pyramidflow.training.losses import pyramid_flow_loss
from pyramidflow.training.temporal_loss import packed_flow_loss, split_batch
from pyramidflow.training.trainer_config import (  # noqa: F401  (the trainer's public config names)
    LoopConfig,
    OptimConfig,
    PyramidConfig,
    TrainerConfig,
    lr_lambda,
)


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message names the step and the last good checkpoint."""


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (buffers copied)."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay after ``step`` updates: min(decay, (1 + step) / (10 + step)).

    Without the warm-up the initial random weights would keep a share decay^n of the average (55%
    after 600 steps at 0.999); with it the average forgets them within the first few hundred steps.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


def pixels_to_model_space(video: Tensor) -> Tensor:
    """(B, T, 3, H, W) in [0, 1] -> (B, 3, T, H, W) in [-1, 1]."""
    return video.permute(0, 2, 1, 3, 4).mul(2.0).sub(1.0)


def example_generator(seed: int, step: int, index: int, device="cpu") -> torch.Generator:
    """The generator of one example of one step (independent of processes and accumulation)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 65_537 + index)


class Trainer:
    """Pyramidal flow-matching training loop with checkpoints, EMA, logging and resume.

    Use ``Trainer(...).train()``; ``train(resume="latest")`` continues the newest checkpoint in
    ``out_dir``. A ``validate(trainer, step)`` hook, if given, runs every ``validate_every`` steps
    and at the end on the main process.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        encode_text: Callable[[list[str]], Tensor],
        dataset,
        config: TrainerConfig,
        out_dir: str | Path,
        *,
        to_model_space: Callable[[Tensor], Tensor] = pixels_to_model_space,
        extra_trainable: Mapping[str, torch.nn.Module] | None = None,
        validate: Callable[[Trainer, int], Any] | None = None,
        accelerator=None,
    ):
        self.config = config
        self.out_dir = Path(out_dir)
        loop = config.loop
        if loop.batch_size < 1 or loop.grad_accum < 1 or loop.max_steps < 0:
            raise PyramidflowError("batch_size and grad_accum must be >= 1 and max_steps >= 0")
        self.accelerator = accelerator = accelerator or make_accelerator(loop.mixed_precision)
        world = self.accelerator.num_processes
        if loop.batch_size % (world * loop.grad_accum):
            raise PyramidflowError(
                f"batch_size {loop.batch_size} must be divisible by processes x grad_accum "
                f"= {world} x {loop.grad_accum}"
            )
        self.micro_batch = loop.batch_size // (world * loop.grad_accum)
        self.schedule, self.transform = config.pyramid.build()
        config.temporal.check()
        self.encode_text = encode_text
        self.dataset = dataset
        if len(dataset) == 0:
            raise PyramidflowError("the training dataset is empty")
        self.to_model_space = to_model_space
        self.validate_hook = validate
        self.modules: dict[str, torch.nn.Module] = {"transformer": model, **dict(extra_trainable or {})}
        self.ema: dict[str, torch.nn.Module] = {}
        if loop.ema_decay > 0:
            self.ema = {k: copy.deepcopy(m).requires_grad_(False).eval() for k, m in self.modules.items()}
        # Replicated modules are not wrapped in DistributedDataParallel: a step makes one forward
        # pass per stage present, and that number differs between processes, which DDP's hooks
        # cannot follow. Gradients are averaged explicitly after the backward passes instead
        # (``_sync_gradients``), which is the same update. Sharded modules (``parallel: fsdp``)
        # always take the packed path: one forward per micro-batch on every process. The LR
        # scheduler steps once per optimiser step whatever the number of processes.
        if loop.parallel not in ("replicate", "fsdp"):
            raise PyramidflowError(f"unknown loop.parallel {loop.parallel!r}; valid: replicate, fsdp")
        self.wrapped = {k: m.to(accelerator.device) for k, m in self.modules.items()}
        for ema in self.ema.values():
            ema.to(accelerator.device)
        self._broadcast_parameters()
        self.sharding = None
        if loop.parallel == "fsdp" and world > 1:
            self.sharding = Sharding(self.wrapped, self.ema)
        params = [p for m in self.wrapped.values() for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.optim.lr, betas=tuple(config.optim.betas),
                                           weight_decay=config.optim.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                              lr_lambda(config.optim, loop.max_steps))
        self.step = 0
        self._writer = None
        self._perm_cache: dict[int, list[int]] = {}
        self.checkpoint_extra: dict[str, Any] = {}  # written into every checkpoint's meta.json
        self.train_seconds = 0.0  # wall-clock time spent in train_step by this process (this session)

    # ------------------------------------------------------- distribution
    def _params(self) -> list[torch.nn.Parameter]:
        return [p for m in self.wrapped.values() for p in m.parameters() if p.requires_grad]

    def _broadcast_parameters(self) -> None:
        """Start every process from the main process's weights."""
        if self.accelerator.num_processes > 1:
            broadcast_parameters(self.wrapped.values())

    def _sync_gradients(self) -> None:
        """Average gradients over replicated processes; sharded modules need nothing (FSDP
        reduce-scatters, i.e. averages, in the backward pass)."""
        if self.accelerator.num_processes > 1 and self.sharding is None:
            average_gradients(self._params(), self.accelerator.num_processes)

    # ------------------------------------------------------------------ data
    def _global_indices(self, step: int) -> list[int]:
        """Dataset indices of the global batch of ``step`` (a seeded permutation per epoch)."""
        n, b = len(self.dataset), self.config.loop.batch_size
        out = []
        for pos in range(step * b, (step + 1) * b):
            epoch, offset = divmod(pos, n)
            perm = self._perm_cache.get(epoch)
            if perm is None:
                gen = torch.Generator().manual_seed(self.config.loop.seed * 7919 + epoch)
                perm = torch.randperm(n, generator=gen).tolist()
                self._perm_cache = {epoch: perm}
            out.append(perm[offset])
        return out

    def _micro_batches(self, step: int):
        """(global positions, dataset indices) of this process's micro-batches for ``step``."""
        idx = self._global_indices(step)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        m = self.micro_batch
        for a in range(self.config.loop.grad_accum):
            start = (a * world + rank) * m
            positions = list(range(start, start + m))
            yield positions, [idx[j] for j in positions]

    def _load(self, indices: list[int]) -> tuple[Tensor | list[Tensor], list[str]]:
        """Model-space examples on the CPU: one (B, C, T, H, W) batch, or a list when clip lengths
        differ. The training paths are drawn there, with the per-example CPU generators, so a run is
        the same on every device; the model's inputs then move to the accelerator."""
        items = [self.dataset[i] for i in indices]
        videos, device = split_batch([it["video"] for it in items]), self.accelerator.device
        if isinstance(videos, Tensor):
            x0 = self.to_model_space(videos.to(device)).float().cpu()
        else:
            x0 = [self.to_model_space(v[None].to(device)).float().cpu() for v in videos]
        return x0, [it["text"] for it in items]

    # ------------------------------------------------------------- training
    def _micro_step(self, step: int, positions: list[int], indices: list[int]) -> tuple[Tensor, dict]:
        loop, pyr = self.config.loop, self.config.pyramid
        x0, texts = self._load(indices)
        gens = [example_generator(loop.seed, step, j) for j in positions]
        dropped = [
            "" if float(torch.rand((), generator=g)) < loop.text_dropout else t
            for g, t in zip(gens, texts, strict=True)
        ]
        text = self.encode_text(dropped)
        path = dict(stage_weights=pyr.stage_weights, density=pyr.density, logit_mean=pyr.logit_mean,
                    logit_std=pyr.logit_std)
        model, temporal = self.wrapped["transformer"], self.config.temporal
        with self.accelerator.autocast():
            if isinstance(x0, list) or temporal.autoregressive or self.sharding is not None:  # packed
                examples = x0 if isinstance(x0, list) else list(x0.split(1, dim=0))
                out = packed_flow_loss(model, examples, text, self.schedule, self.transform, gens, temporal,
                                       **path)
            else:
                out = pyramid_flow_loss(model, x0, text, self.schedule, self.transform, gens, **path)
        # Normalise by the global batch: the mean over processes of this is the global mean.
        local = out.total * (self.accelerator.num_processes / loop.batch_size)
        return local, {"per_example": out.per_example, "stage": out.stage}

    def _check_finite(self, loss: Tensor, step: int) -> None:
        if torch.isfinite(loss).all():
            return
        last = resolve_checkpoint(self.out_dir, "latest")
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"the loss became non-finite ({float(loss)}) at step {step + 1}; training stopped and "
            f"{where}. Lower optim.lr or check the data."
        )

    def train_step(self) -> dict:
        """One optimiser step over the global batch; returns logged values."""
        acc, loop = self.accelerator, self.config.loop
        for m in self.wrapped.values():
            m.train()
        total, per_example, stages = 0.0, [], []
        self.optimizer.zero_grad(set_to_none=True)
        for positions, indices in self._micro_batches(self.step):
            loss, info = self._micro_step(self.step, positions, indices)
            self._check_finite(loss.detach(), self.step)
            acc.backward(loss)  # local sums over the global batch: gradients simply add up
            total += float(loss.detach())
            per_example.append(info["per_example"])
            stages.append(info["stage"])
        self._sync_gradients()
        grad_norm = None
        if self.config.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema:
            for name, ema in self.ema.items():
                update_ema(ema, acc.unwrap_model(self.wrapped[name]), ema_decay_at(loop.ema_decay, self.step))
        self.step += 1
        per_example_t, stage_t = torch.cat(per_example), torch.cat(stages)
        stats = {"loss": float(acc.reduce(torch.tensor(total, device=acc.device), "mean")),
                 "lr": self.lr_scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            full = getattr(grad_norm, "full_tensor", None)  # a DTensor when sharded
            stats["grad_norm"] = float(full() if full else grad_norm)
        for s in range(self.schedule.num_stages):
            sel = stage_t == s
            if sel.any():
                stats[f"loss_stage{s}"] = float(per_example_t[sel].mean())
        return stats

    # ------------------------------------------------------------ checkpoint
    def sampling_modules(self) -> dict[str, torch.nn.Module]:
        """Whole modules to sample from (main process): the EMA copies, else the live weights. When
        sharded these are the CPU copies from the last :meth:`Sharding.gather` (a checkpoint or a
        validation refreshes them)."""
        if self.sharding is not None:
            return {**self.sharding.copies, **self.sharding.ema_copies}
        return {k: self.ema.get(k, self.accelerator.unwrap_model(m)) for k, m in self.wrapped.items()}

    def save(self) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        models = {k: acc.unwrap_model(m) for k, m in self.wrapped.items()}
        ema, optimizer = self.ema, self.optimizer
        if self.sharding is not None:  # whole tensors on the main process, the unsharded layout
            self.sharding.gather()
            models, ema = self.sharding.copies, self.sharding.ema_copies
            optimizer = Snapshot(self.sharding.gather_optimizer(self.optimizer))
        if acc.is_main_process:
            path = save_checkpoint(
                self.out_dir, self.step, models, optimizers={"main": optimizer},
                schedulers={"main": self.lr_scheduler}, ema=ema,
                data_position=self.step * self.config.loop.batch_size,
                extra={"seed": self.config.loop.seed, "processes": acc.num_processes,
                       "parallel": self.config.loop.parallel, **self.checkpoint_extra},
                keep_last=self.config.loop.keep_last,
            )
        acc.wait_for_everyone()
        return path

    def resume(self, which: str = "latest") -> int:
        """Restore from ``out_dir`` (``latest``, a step number or a path); returns the step."""
        path = resolve_checkpoint(self.out_dir, which)
        if path is None:
            if which == "latest":
                return self.step
            raise FileNotFoundError(f"no checkpoint {which!r} under {self.out_dir}")
        acc = self.accelerator
        if self.sharding is None:
            models = {k: acc.unwrap_model(m) for k, m in self.wrapped.items()}
            loaded = load_checkpoint(path, models, {"main": self.optimizer}, {"main": self.lr_scheduler},
                                     self.ema, rng=True)
        else:  # the main process reads the whole tensors, then they are sent to the shards
            snapshot = Snapshot(None)
            main = acc.is_main_process
            loaded = load_checkpoint(path, self.sharding.copies, {"main": snapshot} if main else {},
                                     {"main": self.lr_scheduler}, self.sharding.ema_copies, rng=True)
            self.sharding.scatter()
            self.sharding.scatter_optimizer(self.optimizer, snapshot.state)
        self.step = loaded.step
        return self.step

    # ------------------------------------------------------------------ loop
    def _log(self, stats: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "logs"))
        for key, value in stats.items():
            tag = f"loss/{key[5:]}" if key.startswith("loss_") else f"train/{key}"
            self._writer.add_scalar(tag, value, self.step)

    def train(self, resume: str | None = None, max_steps: int | None = None) -> dict:
        """Train to ``max_steps`` (default: the config's); returns the last step's stats."""
        from tqdm.auto import tqdm

        loop = self.config.loop
        if resume:
            self.resume(resume)
        target = loop.max_steps if max_steps is None else max_steps
        acc = self.accelerator
        bar = tqdm(total=target, initial=self.step, disable=not (loop.progress and acc.is_main_process),
                   desc="train", dynamic_ncols=True)
        stats: dict = {}
        started = time.perf_counter()
        deadline = started + 60.0 * loop.max_minutes if loop.max_minutes > 0 else float("inf")
        while self.step < target and time.perf_counter() < deadline:
            tick = time.perf_counter()
            stats = self.train_step()
            self.train_seconds += time.perf_counter() - tick
            bar.update(1)
            if self.step % max(1, loop.log_every) == 0 or self.step == target:
                self._log(stats)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if loop.checkpoint_every and self.step % loop.checkpoint_every == 0:
                self.save()
            if self.validate_hook and loop.validate_every and self.step % loop.validate_every == 0:
                self._validate()
        bar.close()
        if self.step and (not loop.checkpoint_every or self.step % loop.checkpoint_every):
            self.save()
        if self.validate_hook and not (loop.validate_every and self.step % loop.validate_every == 0):
            self._validate()
        stats["seconds"] = time.perf_counter() - started
        if self._writer is not None:
            self._writer.flush()
        return stats

    def _validate(self) -> None:
        copies = []
        if self.sharding is not None:  # sample from whole copies, on the device while validating
            self.sharding.gather()
            copies = list(self.sampling_modules().values())
            for m in copies:
                m.to(self.accelerator.device)
        if self.accelerator.is_main_process:
            result = self.validate_hook(self, self.step)
            if isinstance(result, Mapping):
                self._log({f"val_{k}": float(v) for k, v in result.items() if isinstance(v, (int, float))})
        for m in copies:
            m.cpu()
        self.accelerator.wait_for_everyone()

