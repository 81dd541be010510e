"""Typed configs of training (YAML presets fill them through :mod:`pyramidflow.config`).

* :class:`OptimConfig`, :class:`LoopConfig` and the learning-rate schedule :func:`lr_lambda`
  (docs/maths.md section 11): what the :class:`pyramidflow.training.trainer.Trainer` loop needs,
  whatever the method.
* :class:`TrainConfig`: a whole flow-matching experiment (``pyramidflow train``): data, space
  (pixels or a VAE's latents), transformer, text encoder, pyramid, temporal mode, sampling defaults,
  optimisation and loop. It is saved beside every checkpoint (``meta.json``) and as
  ``OUT/config.yaml``, so a checkpoint is self-describing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from pyramidflow.config import check_seed, from_dict
from pyramidflow.data.sources import CLEAN_TARGETS
from pyramidflow.errors import PyramidflowError
from pyramidflow.models.lora import ATTENTION_TARGETS
from pyramidflow.pipelines.config import SPACES, SamplingConfig
from pyramidflow.pyramid.config import PyramidConfig, TemporalConfig

TEXT_KINDS = ("embedded", "pretrained")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "constant"  # constant | cosine | linear | wsd (after the warm-up)
    decay_steps: int = 0  # wsd: the last decay_steps steps decay linearly to 0 (constant before)
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class LoopConfig:
    seed: int = 0
    batch_size: int = 16  # examples per optimiser step, over all processes and accumulation
    grad_accum: int = 1
    max_steps: int = 1000
    mixed_precision: str = "auto"  # auto (bf16 on GPU, none on CPU) | no | bf16 | fp16
    ema_decay: float = 0.999  # 0 disables the EMA copy; warmed up as min(decay, (1 + n) / (10 + n))
    text_dropout: float = 0.1  # classifier-free dropout: the prompt becomes ""
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    validate_every: int = 0  # 0: only at the end (if a validation hook is given)
    max_minutes: float = 0.0  # > 0: also stop (with a checkpoint) once this much wall-clock time passed
    progress: bool = True
    parallel: str = "replicate"  # several processes: replicate (DDP-like) | fsdp (sharded, distributed.py)


@dataclass
class ModelConfig:
    """The :class:`PyramidDiT` (channels and text width follow from the space and the encoder)."""

    patch_size: tuple[int, int, int] = (1, 4, 4)
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 512
    num_layers: int = 4
    freq_dim: int = 64
    rope_theta: float = 10000.0
    attention_backend: str = "auto"
    pretrained: str | None = None  # start from a saved transformer (PyramidDiT or diffusers Wan)
    gradient_checkpointing: bool = False
    grow_layers: int = 0  # with pretrained: insert this many new blocks, each starting as the identity
    lora_rank: int = 0  # > 0: freeze the transformer and train one LoRA adapter of this rank
    lora_alpha: float | None = None  # adapter scale alpha / rank (default alpha = rank)
    lora_targets: tuple[str, ...] = ATTENTION_TARGETS  # module name suffixes (models/lora.py)
    lora_per_stage: bool = False  # one adapter per pyramid stage instead of one shared by the stages
    # pyramidal patchification (PPFDiT, docs/maths.md section 9): one patch size per stage, coarse to
    # fine, the last patch_size; with pretrained, a one-patch transformer is converted (from_transformer)
    ppf_patch_sizes: tuple[tuple[int, int, int], ...] | None = None


@dataclass
class TextEncoderConfig:
    kind: str = "embedded"  # embedded (trained with the model) | pretrained (frozen, from path)
    path: str | None = None  # pretrained: a local transformers folder; embedded: resume from a saved one
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 24
    vocab_captions: int = 20_000  # captions read to build the embedded encoder's vocabulary
    cache_dir: str | None = None  # pretrained: on-disk embedding cache


@dataclass
class DataConfig:
    source: str = "shapes"  # shapes | folder | manifest | latents (a cache-latents folder)
    path: str | None = None
    frames: int = 4  # video frames per clip
    height: int = 32
    width: int = 32
    fps: float = 8.0
    num_clips: int = 100_000  # procedural source: clips per epoch
    image_ratio: float = 0.0  # procedural source: one-frame images mixed in, as a share of the clips
    stride: int | None = None  # real videos: several clips per file, this many frames apart
    bounce: bool = False
    travel_frames: int | None = None  # shapes: frames to cover a speed's share of the frame (None: the clip)
    seed: int = 0
    clean_targets: str = "auto"  # latents cache: latent (definition 1) | pixel (definition 2) | auto


@dataclass
class TrainConfig:
    output_dir: str = "outputs/train"
    space: str = "pixel"  # pixel | latent
    vae: str | None = None  # latent space: a saved VAE folder (ours or diffusers' AutoencoderKLWan)
    wan: str | None = None  # start from a diffusers WanPipeline folder (fills vae, text encoder, model)
    num_threads: int = 0  # CPU threads for torch (0: torch's default)
    validation_prompts: int = 16  # clips sampled and evaluated at each validation
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def check(self) -> None:
        if self.wan:
            self.apply_wan()
        check_seed(self.loop.seed, "loop.seed")
        check_seed(self.data.seed, "data.seed")
        if self.space not in SPACES:
            raise PyramidflowError(f"unknown space {self.space!r}; valid: {', '.join(SPACES)}")
        if self.space == "latent" and not self.vae:
            raise PyramidflowError("space: latent needs vae: a folder with a saved VAE")
        if self.text_encoder.kind not in TEXT_KINDS:
            raise PyramidflowError(f"unknown text_encoder.kind {self.text_encoder.kind!r}; "
                                   f"valid: {', '.join(TEXT_KINDS)}")
        if self.text_encoder.kind == "pretrained" and not self.text_encoder.path:
            raise PyramidflowError("text_encoder.kind: pretrained needs text_encoder.path (a local folder)")
        if self.data.source == "latents" and self.space != "latent":
            raise PyramidflowError("data.source: latents needs space: latent and the vae that made the cache")
        if self.data.clean_targets not in CLEAN_TARGETS:
            raise PyramidflowError(f"data.clean_targets must be one of {', '.join(CLEAN_TARGETS)}, "
                                   f"got {self.data.clean_targets!r}")
        if self.data.clean_targets == "pixel" and self.data.source != "latents":
            raise PyramidflowError("data.clean_targets: pixel (definition 2) reads the lowered videos' "
                                   "latents from a cache: it needs data.source: latents "
                                   "(cache-latents --pyramid-levels N)")
        if self.data.clean_targets == "pixel" and self.pyramid.patchify:
            raise PyramidflowError("data.clean_targets: pixel (definition 2) lowers the clean video per "
                                   "stage, but pyramid.patchify keeps full resolution at every stage: "
                                   "use data.clean_targets: latent or auto")
        if not 0.0 <= self.data.image_ratio < 1.0:
            raise PyramidflowError(f"data.image_ratio must lie in [0, 1), got {self.data.image_ratio}")
        self.temporal.check()
        self.pyramid.check_temporal(self.temporal)
        if self.model.grow_layers < 0:
            raise PyramidflowError(f"model.grow_layers must be >= 0, got {self.model.grow_layers}")
        if self.model.grow_layers and (not self.model.pretrained or self.model.lora_rank > 0):
            raise PyramidflowError("model.grow_layers adds blocks to a trained transformer: it needs "
                                   "model.pretrained, and the new blocks train in full (no lora_rank)")
        if self.model.ppf_patch_sizes is not None and not self.pyramid.patchify:
            raise PyramidflowError("model.ppf_patch_sizes runs stage i at patch level i: it needs "
                                   "pyramid.patchify: true")
        if self.model.ppf_patch_sizes is not None and self.model.lora_rank > 0:
            raise PyramidflowError("model.ppf_patch_sizes adds patch levels that must be trained in full: "
                                   "it cannot be combined with model.lora_rank")
        if self.model.lora_per_stage and (self.model.lora_rank < 1 or self.temporal.autoregressive):
            raise PyramidflowError("model.lora_per_stage needs model.lora_rank >= 1 and full-sequence clips "
                                   "(temporal.mode: full_sequence): one model call per stage")
        if len(self.sampling.steps) != self.pyramid.num_stages:
            raise PyramidflowError(f"sampling.steps {list(self.sampling.steps)} needs one entry per stage "
                                   f"({self.pyramid.num_stages})")

    def apply_wan(self) -> None:
        """Fill what a run from the Wan pipeline folder ``wan`` needs and was left unset: latent space,
        ``vae`` (its vae/), a frozen pretrained text encoder (its text_encoder/, tokenizer beside it),
        ``model.pretrained`` (its transformer/, loaded as PyramidDiT). The filled values are written
        into the run's config, so checkpoints name the folders they came from."""
        from pyramidflow.models.wan_folder import inspect_wan_folder

        folder = inspect_wan_folder(self.wan)
        if self.space == "pixel" and self.vae is None:
            self.space = "latent"
        self.vae = self.vae or str(folder.part("vae"))
        if not self.text_encoder.path:
            self.text_encoder.kind, self.text_encoder.path = "pretrained", str(folder.part("text_encoder"))
        self.model.pretrained = self.model.pretrained or str(folder.part("transformer"))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return from_dict(cls, data)


def lr_lambda(optim: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then constant, cosine or linear decay to 0 at ``max_steps``, or ``wsd``
    (warm-up, stable, decay): constant, then linear to 0 over the last ``decay_steps`` steps. A wsd run
    still in its stable phase can be extended by resuming with a larger ``max_steps``; a run shorter
    than the warm-up plus ``decay_steps`` decays over all its steps after the warm-up."""
    if optim.schedule not in ("constant", "cosine", "linear", "wsd"):
        raise PyramidflowError(f"unknown lr schedule {optim.schedule!r}; valid: constant, cosine, linear, "
                               "wsd")
    if optim.schedule == "wsd" and optim.decay_steps <= 0:
        raise PyramidflowError(f"schedule wsd needs optim.decay_steps > 0, got {optim.decay_steps}")
    decay = min(optim.decay_steps, max(1, max_steps - optim.warmup_steps))  # a short run: all decay

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        if optim.schedule == "wsd":
            return min(1.0, max(0.0, (max_steps - step) / decay))
        progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
        if optim.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor
