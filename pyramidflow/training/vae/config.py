"""Typed config of ``pyramidflow train-vae`` (presets in ``configs/vae-*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class VAEModelConfig:
    """Arguments of :class:`pyramidflow.models.vae.CausalVideoVAE` (paper: 128/256/512/512, 8x8x8, 16),
    or, with ``kind: wan``, of diffusers' ``AutoencoderKLWan`` (``latent_channels`` is its z_dim,
    ``temporal_down`` its temperal_downsample; one level per entry of ``dim_mult`` after the first)."""

    kind: Literal["causal", "wan"] = "causal"
    base_dim: int = 16  # wan: channels of the first level
    dim_mult: tuple[int, ...] = (1, 2, 2, 2)  # wan: channel multiplier per level
    num_res_blocks: int = 1  # wan: residual blocks per level
    residual: bool = False  # wan: is_residual (shortcuts around re-sampling; learns the shapes far sooner)
    latent_channels: int = 8
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    spatial_down: tuple[bool, ...] = (True, True, False)
    temporal_down: tuple[bool, ...] = (True, False, False)
    layers_per_block: int = 1
    decoder_layers_per_block: int = 1
    norm_groups: int = 8  # GroupNorm groups per frame; 0 = channel RMS norm (local, tile-exact)
    block_type: Literal["res", "plain"] = "res"  # "plain": conv + SiLU blocks, no norm (fast CPU presets)
    mid_blocks: int = 2
    shortcut: bool = False  # DC-AE parameter-free residual paths around down/up-samples
    init: Literal["random", "pooled"] = "random"  # wan + residual: start as a pooled-colour autoencoder


@dataclass
class VAEDataConfig:
    source: Literal["shapes", "folder", "manifest"] = "shapes"
    path: str | None = None  # folder of videos or manifest file (not used by "shapes")
    frames: int = 9  # must be 1 + k * temporal_compression
    height: int = 32
    width: int = 32
    num_train: int = 4096  # clips drawn from procedural sources
    num_val: int = 16  # held-out clips for PSNR / SSIM
    seed: int = 0
    fps: float | None = None  # video sources: resample to this rate (None keeps the file's)
    stride: int | None = None  # video sources: a clip every `stride` frames (None: one per file)
    val_path: str | None = None  # video sources: validate on this folder/manifest (else a held-out split)
    cache_in_memory: bool = False  # keep decoded clips (uint8) in RAM: for small video datasets
    tint: float = 0.0  # share of training clips blended with a random colour (colour on every pixel)
    tint_weight: tuple[float, float] = (0.1, 0.6)  # range of the colour's weight in a tinted clip


@dataclass
class VAELossConfig:
    l1: float = 1.0
    mse: float = 0.0
    ssim: float = 0.2  # weight of 1 - SSIM
    chroma: float = 0.0  # weight of the L1 on colour minus grey level (colour only in small objects)
    kl: float = 1e-4  # weight of the per-element mean KL
    disc_weight: float = 0.0  # 0 disables the patch discriminator
    disc_start: int = 1000  # optimizer steps before the adversarial terms switch on
    disc_lr: float = 2e-4
    perceptual_model: str | None = None  # local transformers vision model directory
    perceptual_weight: float = 0.0


@dataclass
class VAETrainConfig:
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    output_dir: str = "outputs/vae"
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float = 1.0
    max_steps: int = 2000
    max_minutes: float | None = None  # stop (and save) after this much wall clock
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads; None keeps the default
    log_every: int = 10
    val_every: int = 200
    checkpoint_every: int = 500
    keep_last: int = 2
