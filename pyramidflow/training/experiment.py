"""``pyramidflow train``: one typed config (YAML preset + overrides) -> data, models, trainer.

:class:`TrainConfig` is the whole experiment: the data, the space the flow runs in (pixels or the
latents of a VAE), the transformer and text encoder, the pyramid (MATH.md sections 3-6), the
temporal mode (section 7), optimisation and the loop. :func:`build_components` turns it into
objects and :func:`make_trainer` into a :class:`Trainer`; the config is saved beside every
checkpoint (``meta.json``) and as ``OUT/config.yaml``, so a checkpoint is self-describing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import Tensor

from pyramidflow.config import from_dict, to_dict
from pyramidflow.data.sources import captions, clip_dataset, with_images
from pyramidflow.errors import PyramidflowError
from pyramidflow.models import EmbeddedTextEncoder, PyramidDiT, load_text_encoder
from pyramidflow.training.temporal_loss import TemporalConfig
from pyramidflow.training.trainer import Trainer, pixels_to_model_space
from pyramidflow.training.trainer_config import LoopConfig, OptimConfig, PyramidConfig, TrainerConfig

SPACES = ("pixel", "latent")
TEXT_KINDS = ("embedded", "pretrained")


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


@dataclass
class SamplingConfig:
    """Generation defaults stored with the model (the sample command and validation use them)."""

    steps: tuple[int, ...] = (10, 10, 10)
    first_steps: tuple[int, ...] | None = None  # autoregressive: the first unit's steps
    guidance: float = 4.0  # first frame / first unit
    video_guidance: float | None = None  # later frames / units (default: guidance)


@dataclass
class TrainConfig:
    output_dir: str = "outputs/train"
    space: str = "pixel"  # pixel | latent
    vae: str | None = None  # latent space: a saved VAE folder (ours or diffusers' AutoencoderKLWan)
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
        if not 0.0 <= self.data.image_ratio < 1.0:
            raise PyramidflowError(f"data.image_ratio must lie in [0, 1), got {self.data.image_ratio}")
        self.temporal.check()
        if len(self.sampling.steps) != self.pyramid.num_stages:
            raise PyramidflowError(f"sampling.steps {list(self.sampling.steps)} needs one entry per stage "
                                   f"({self.pyramid.num_stages})")

    def trainer_config(self) -> TrainerConfig:
        return TrainerConfig(pyramid=self.pyramid, temporal=self.temporal, optim=self.optim, loop=self.loop)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return from_dict(cls, data)


@dataclass
class Components:
    model: PyramidDiT
    text_encoder: torch.nn.Module
    dataset: torch.utils.data.Dataset
    to_model_space: Callable[[Tensor], Tensor]
    vae: object | None = None

    @property
    def trainable_text(self) -> bool:
        return isinstance(self.text_encoder, EmbeddedTextEncoder)


def build_dataset(cfg: TrainConfig) -> torch.utils.data.Dataset:
    d = cfg.data
    common = dict(height=d.height, width=d.width, seed=d.seed, fps=d.fps)
    extra = ({"bounce": d.bounce, "travel_frames": d.travel_frames} if d.source == "shapes"
             else {"stride": d.stride})
    videos = clip_dataset(d.source, d.path, frames=d.frames, length=d.num_clips, **common, **extra)
    images = None
    if d.source == "shapes" and d.image_ratio > 0:
        n = round(d.num_clips * d.image_ratio / (1 - d.image_ratio))
        images = clip_dataset("shapes", frames=1, length=n, **{**common, "seed": d.seed + 1})
    return with_images(videos, images)


def build_text_encoder(cfg: TextEncoderConfig, dataset) -> torch.nn.Module:
    if cfg.kind == "pretrained" or cfg.path:
        if cfg.kind == "pretrained":
            return load_text_encoder(cfg.path, max_length=cfg.max_length, cache_dir=cfg.cache_dir)
        return load_text_encoder(cfg.path)
    return EmbeddedTextEncoder.from_captions(
        captions(dataset, cfg.vocab_captions), dim=cfg.dim, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, max_length=cfg.max_length)


def build_model(cfg: ModelConfig, channels: int, text_dim: int) -> PyramidDiT:
    if cfg.pretrained:
        model = PyramidDiT.from_pretrained(cfg.pretrained)
        have = (model.config.in_channels, model.config.text_dim)
        if have != (channels, text_dim):
            raise PyramidflowError(f"{cfg.pretrained}: the transformer takes {have[0]} channels and text of "
                                   f"width {have[1]}, this run needs {channels} and {text_dim}")
    else:
        model = PyramidDiT(
            patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim, in_channels=channels, out_channels=channels,
            text_dim=text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
            rope_theta=cfg.rope_theta, attention_backend=cfg.attention_backend)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def latent_space(vae) -> Callable[[Tensor], Tensor]:
    """(B, T, 3, H, W) in [0, 1] -> normalised VAE latents (B, C, T', h, w)."""

    def encode(video: Tensor) -> Tensor:
        return vae.encode(pixels_to_model_space(video).to(vae.dtype)).float()

    return encode


def _identity(x: Tensor) -> Tensor:
    return x


def check_cache_matches(dataset, vae) -> None:
    """A latent cache must come from this VAE: same class, channels and normalisation."""
    header = dataset.header
    mean, std = vae.latent_stats()
    same = (header.get("vae_class") == type(vae).__name__
            and header.get("latent_channels") == vae.latent_channels
            and torch.allclose(torch.tensor(header.get("latents_mean", [])).float(), mean.float().cpu())
            and torch.allclose(torch.tensor(header.get("latents_std", [])).float(), std.float().cpu()))
    if not same:
        raise PyramidflowError(f"the latent cache was made by {header.get('vae_class')} with "
                               f"{header.get('latent_channels')} channels and other statistics than "
                               f"the configured vae ({type(vae).__name__}, {vae.latent_channels} channels): "
                               "set vae: to the folder the cache was encoded with")


def build_components(cfg: TrainConfig, seed: int | None = None) -> Components:
    """Data, text encoder and transformer of an experiment (weights seeded by ``loop.seed``)."""
    cfg.check()
    dataset = build_dataset(cfg)
    if len(dataset) == 0:
        raise PyramidflowError("the training dataset is empty")
    torch.manual_seed(cfg.loop.seed if seed is None else seed)
    text_encoder = build_text_encoder(cfg.text_encoder, dataset)
    text_dim = int(text_encoder.encode([""])[0].shape[-1])
    vae, to_model_space, channels = None, pixels_to_model_space, 3
    if cfg.space == "latent":
        from pyramidflow.models.vae import load_vae

        try:
            vae = load_vae(cfg.vae)
        except FileNotFoundError as err:
            raise PyramidflowError(
                f"{err} (space: latent needs a trained VAE; make one with `pyramidflow train-vae "
                "--config configs/vae-shapes-tiny.yaml --out DIR`, then --set vae=DIR/vae)"
            ) from err
        to_model_space, channels = latent_space(vae), vae.latent_channels
        if cfg.data.source == "latents":  # already encoded (and normalised) by this VAE
            check_cache_matches(dataset, vae)
            to_model_space = _identity
        else:
            vae.check_frames(cfg.data.frames)
            vae.check_size(cfg.data.height, cfg.data.width)
    model = build_model(cfg.model, channels, text_dim)
    return Components(model, text_encoder, dataset, to_model_space, vae)


def text_fn(encoder) -> Callable[[list[str]], Tensor]:
    """``prompts -> (B, L, D)`` on the encoder's device (the mask is folded in as zero padding)."""
    return lambda prompts: encoder.encode(prompts)[0]


def make_trainer(cfg: TrainConfig, parts: Components, validate=None, accelerator=None) -> Trainer:
    extra = {"text_encoder": parts.text_encoder} if parts.trainable_text else {}
    trainer = Trainer(parts.model, text_fn(parts.text_encoder), parts.dataset, cfg.trainer_config(),
                      cfg.output_dir, to_model_space=parts.to_model_space, extra_trainable=extra,
                      validate=validate, accelerator=accelerator)
    if not parts.trainable_text:
        parts.text_encoder.to(trainer.accelerator.device)
    if parts.vae is not None:
        parts.vae.to(trainer.accelerator.device)
    trainer.checkpoint_extra["config"] = to_dict(cfg)
    if trainer.accelerator.is_main_process:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return trainer


def config_of_checkpoint(meta_extra: dict) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint was written with (``meta.json`` extra)."""
    if "config" not in meta_extra:
        raise PyramidflowError("this checkpoint holds no training config (it was not written by "
                               "pyramidflow train)")
    return TrainConfig.from_dict(meta_extra["config"])
