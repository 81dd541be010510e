"""``pyramidflow train``: a :class:`TrainConfig` -> data, models, the flow-matching method, a trainer.

:func:`build_components` makes the dataset, text encoder, transformer and autoencoder (a VAE, or
:class:`PixelSpace` for pixel models); :func:`make_method` wraps them in :class:`FlowMatching` and
:func:`make_trainer` in the shared :class:`Trainer`. The whole config travels in every checkpoint
(``meta.json``) and in ``OUT/config.yaml``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from pyramidflow.config import to_dict
from pyramidflow.data.sources import captions, clip_dataset, with_images
from pyramidflow.errors import PyramidflowError, PyramidflowWarning
from pyramidflow.models import EmbeddedTextEncoder, PPFDiT, PyramidDiT, load_text_encoder, load_transformer
from pyramidflow.models.grow import grow_depth
from pyramidflow.models.lora import add_lora
from pyramidflow.models.ppf import check_stage_levels
from pyramidflow.models.vae import PixelSpace, load_vae
from pyramidflow.training.config import ModelConfig, TextEncoderConfig, TrainConfig
from pyramidflow.training.methods.flow import FlowMatching
from pyramidflow.training.trainer import Trainer


@dataclass
class Components:
    model: PyramidDiT
    text_encoder: torch.nn.Module
    dataset: torch.utils.data.Dataset
    autoencoder: torch.nn.Module  # a VAE, or PixelSpace
    encoded: bool = False  # the dataset holds latents already (a latent cache)

    @property
    def trainable_text(self) -> bool:
        return isinstance(self.text_encoder, EmbeddedTextEncoder)


def build_dataset(cfg: TrainConfig) -> torch.utils.data.Dataset:
    d = cfg.data
    common = dict(height=d.height, width=d.width, seed=d.seed, fps=d.fps)
    # a patchification pyramid keeps full resolution at every stage: a cache's lowered levels are unused
    targets = "latent" if cfg.pyramid.patchify else d.clean_targets
    latents = {"clean_targets": targets, "stages": cfg.pyramid.num_stages}
    extra = ({"bounce": d.bounce, "travel_frames": d.travel_frames} if d.source == "shapes"
             else latents if d.source == "latents" else {"stride": d.stride})
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


def build_model(cfg: ModelConfig, channels: int, text_dim: int, num_stages: int = 1) -> PyramidDiT:
    """The transformer: new, or ``cfg.pretrained`` (a saved PyramidDiT / PPFDiT or diffusers Wan); with
    ``cfg.ppf_patch_sizes`` a PPFDiT, converted from a one-patch pretrained one (docs/maths.md section 9)."""
    sizes = None if cfg.ppf_patch_sizes is None else [list(p) for p in cfg.ppf_patch_sizes]
    if cfg.pretrained:
        model = load_transformer(cfg.pretrained)
        have = (model.config.in_channels, model.config.text_dim)
        if have != (channels, text_dim):
            raise PyramidflowError(f"{cfg.pretrained}: the transformer takes {have[0]} channels and text of "
                                   f"width {have[1]}, this run needs {channels} and {text_dim}")
        model = grow_depth(model, cfg.grow_layers)
        if sizes is not None and not isinstance(model, PPFDiT):
            model = PPFDiT.from_transformer(model, sizes)
        elif sizes is not None and [list(p) for p in model.patch_sizes] != sizes:
            have = [list(p) for p in model.patch_sizes]
            raise PyramidflowError(f"{cfg.pretrained}: the transformer's patch levels are {have}, "
                                   f"model.ppf_patch_sizes asks {sizes}")
    else:
        kind, extra = (PyramidDiT, {}) if sizes is None else (PPFDiT, {"ppf_patch_sizes": sizes})
        model = kind(
            patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim, in_channels=channels, out_channels=channels,
            text_dim=text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
            rope_theta=cfg.rope_theta, attention_backend=cfg.attention_backend, **extra)
    if cfg.lora_rank > 0:
        if not cfg.pretrained:
            raise PyramidflowError("model.lora_rank needs model.pretrained (a LoRA adapts trained weights)")
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets,
                 stages=num_stages if cfg.lora_per_stage else 0)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


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


def warn_cache_size(dataset, data) -> None:
    """One warning when ``data.frames/height/width/fps`` (the pipeline's default clip) differ from the
    clips a latent cache was encoded at."""
    header = dataset.header
    keys = ("frames", "height", "width", "fps")
    differ = [f"data.{key}={getattr(data, key)} (cache: {header[key]})" for key in keys
              if header.get(key) is not None and header[key] != getattr(data, key)]
    if differ:
        warnings.warn(f"the latent cache's clips differ from the config: {', '.join(differ)}; these "
                      "settings are the trained pipeline's default clip for sampling", PyramidflowWarning,
                      stacklevel=2)


def build_components(cfg: TrainConfig, seed: int | None = None) -> Components:
    """Data, text encoder and transformer of an experiment (weights seeded by ``loop.seed``)."""
    cfg.check()
    dataset = build_dataset(cfg)
    if len(dataset) == 0:
        raise PyramidflowError("the training dataset is empty")
    torch.manual_seed(cfg.loop.seed if seed is None else seed)
    text_encoder = build_text_encoder(cfg.text_encoder, dataset)
    text_dim = int(text_encoder.encode([""])[0].shape[-1])
    autoencoder, encoded = PixelSpace(), False
    if cfg.space == "latent":
        try:
            autoencoder = load_vae(cfg.vae)
        except FileNotFoundError as err:
            raise PyramidflowError(
                f"{err} (space: latent needs a trained VAE; make one with `pyramidflow train-vae "
                "--config configs/vae-shapes-tiny.yaml --out DIR`, then --set vae=DIR/vae)"
            ) from err
        if cfg.data.source == "latents":  # already encoded (and normalised) by this VAE
            check_cache_matches(dataset, autoencoder)
            warn_cache_size(dataset, cfg.data)
            encoded = True
        else:
            autoencoder.check_frames(cfg.data.frames)
            autoencoder.check_size(cfg.data.height, cfg.data.width)
    model = build_model(cfg.model, autoencoder.latent_channels, text_dim, cfg.pyramid.num_stages)
    check_stage_levels(model, cfg.pyramid)
    return Components(model, text_encoder, dataset, autoencoder, encoded)


def make_method(cfg: TrainConfig, parts: Components, validator=None, finisher=None) -> FlowMatching:
    """The flow-matching method of an experiment (its config goes into every checkpoint)."""
    return FlowMatching(parts.model, parts.text_encoder, pyramid=cfg.pyramid, temporal=cfg.temporal,
                        optim=cfg.optim, autoencoder=parts.autoencoder, encoded=parts.encoded,
                        train_text_encoder=parts.trainable_text, text_dropout=cfg.loop.text_dropout,
                        validator=validator, finisher=finisher, extra={"config": to_dict(cfg)})


def make_trainer(cfg: TrainConfig, parts: Components, validator=None, finisher=None,
                 accelerator=None) -> Trainer:
    """A :class:`Trainer` over :func:`make_method`; writes ``OUT/config.yaml`` (main process)."""
    trainer = Trainer(make_method(cfg, parts, validator, finisher), parts.dataset, cfg.loop, cfg.output_dir,
                      accelerator=accelerator)
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
