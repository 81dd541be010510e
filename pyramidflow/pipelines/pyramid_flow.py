"""``PyramidFlowPipeline``: text-to-video, text-to-image and image-to-video with a pyramidal flow model.

A diffusers-style pipeline object: ``from_pretrained(dir)`` / ``save_pretrained(dir)`` /
``pipe(prompt, ...) -> PyramidFlowOutput(frames=...)``. Components: a :class:`PyramidDiT`, a text
encoder (``encode(prompts) -> (embeddings, mask)``) and an autoencoder: a VAE for latent-space
models, :class:`PixelSpace` (the identity) for pixel-space ones.

Generation follows the model's temporal mode (docs/maths.md section 7):

* ``autoregressive``: unit by unit (:func:`generate_units`), each unit by Algorithm 1 with the
  compressed clean history and the history cache; the first unit is generated like an image with
  ``guidance_scale`` (and ``first_steps``), later units with ``video_guidance_scale``. An ``image``
  becomes the first unit (image-to-video).
* ``full_sequence``: all frames at once by Algorithm 1, guidance ``guidance_scale`` on the first
  frame and ``video_guidance_scale`` on the rest. With ``pyramid.patchify`` (a
  :class:`pyramidflow.models.ppf.PPFDiT`, docs/maths.md section 9) every stage is at full resolution,
  stage i at the model's patch level i, and the stages meet without a jump.

``num_frames=1`` is text-to-image in both modes. Within a stage the steps follow the model's saved
``sampling.step_rule``: Euler (Algorithm 1), or x0 re-noising for few-step (distilled) models
(docs/maths.md section 9).

Progress: ``callback_on_step_end(pipe, step_index, total_steps, info)`` is called after every network
evaluation (one Euler step of one unit or of the whole clip, both guidance branches together);
``step_index`` counts from 0 to ``total_steps - 1`` over the whole call and ``info`` holds ``stage``
(int), ``unit`` (autoregressive: the unit being generated, else None) and ``sigma`` (the (B,) tensor
the network was evaluated at). Its return value is ignored; raising from it stops the generation.

Several processes (``enable_parallel``: Ulysses sequence parallelism or CFG parallelism,
:mod:`pyramidflow.pipelines.parallel`) and the speed and memory switches (``set_attention_backend``,
``compile``, ``enable_offload``, ``enable_vae_tiling``: :mod:`pyramidflow.pipelines.switches`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.ppf import check_stage_levels, patch_sizes_of
from pyramidflow.models.vae import PixelSpace, frames_to_model, model_to_frames
from pyramidflow.models.velocity import UnitVelocity
from pyramidflow.pipelines.autoregressive import generate_units
from pyramidflow.pipelines.checks import check_request, prompt_list, warn_unknown_words
from pyramidflow.pipelines.config import PipelineConfig
from pyramidflow.pipelines.guidance import GuidedUnitVelocity, guided_velocity
from pyramidflow.pipelines.images import load_image
from pyramidflow.pipelines.loading import load_pipeline_parts, move_module, save_pipeline
from pyramidflow.pipelines.parallel import BatchSplit, enable_parallel
from pyramidflow.pipelines.switches import Offload, compile_transformer, vae_tiling
from pyramidflow.pyramid import sample
from pyramidflow.pyramid.steps import step_rule as rule_named


@dataclass
class PyramidFlowOutput:
    frames: np.ndarray | Tensor  # np: (B, T, H, W, 3) uint8; pt: (B, T, 3, H, W) float in [0, 1]
    latents: Tensor  # (B, C, T', h, w) model-space result


class PyramidFlowPipeline:
    """Pyramidal flow generation; see the module docstring."""

    def __init__(self, transformer, text_encoder, vae=None, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.config.check()
        if self.config.space == "latent" and vae is None:
            raise PyramidflowError("a latent-space pipeline needs its vae")
        self.transformer, self.text_encoder = transformer, text_encoder
        self.vae = vae if self.config.space == "latent" else PixelSpace()
        self.schedule, self.transform = self.config.pyramid.build()
        check_stage_levels(transformer, self.config.pyramid)
        self.parallel = "none"  # or "ulysses", "cfg": enable_parallel
        self.offload = Offload("cpu")  # enable_offload
        self.tiling: dict = {}  # enable_vae_tiling

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device=None, torch_dtype: torch.dtype | None = None,
                        use_ema: bool = True) -> PyramidFlowPipeline:
        """A saved pipeline, a training checkpoint (EMA weights by default) or a training output folder."""
        parts = load_pipeline_parts(Path(path), use_ema=use_ema)
        pipe = cls(*parts)
        return pipe.to(device or "cpu", torch_dtype)

    def save_pretrained(self, path: str | Path, weights_dtype: torch.dtype | None = None) -> Path:
        """Write ``model_index.json`` and one folder per component (safetensors); returns ``path``.

        ``weights_dtype`` (e.g. ``torch.float16``) stores smaller weights; loading casts them back.
        """
        return save_pipeline(self, Path(path), weights_dtype)

    def to(self, device, dtype: torch.dtype | None = None) -> PyramidFlowPipeline:
        """Move (and cast) the components; with bfloat16 or float16 the transformer's float32-only
        parameters stay float32, and the sampling state is float32 whatever the dtype."""
        for module in (self.transformer, self.text_encoder, self.vae):
            if isinstance(module, torch.nn.Module):
                move_module(module, device, dtype)
        return self

    def enable_parallel(self, mode: str) -> PyramidFlowPipeline:
        """Run every generation over the processes of a torchrun launch: ``"ulysses"`` (the token
        sequence sharded) or ``"cfg"`` (the guided batch split); see :mod:`pyramidflow.pipelines.parallel`.
        Call it on every process, after moving the pipeline to its device."""
        enable_parallel(self, mode)
        return self

    # ------------------------------------------------------------------ switches (pipelines.switches)
    def set_attention_backend(self, backend: str) -> PyramidFlowPipeline:
        """The transformer's attention kernels: "auto", "sdpa" or "flex"."""
        self.transformer.set_attention_backend(backend)
        return self

    def compile(self, **options) -> PyramidFlowPipeline:
        """``torch.compile`` the transformer's blocks (static shapes: one graph per stage); ``options``
        go to ``torch.compile``. The first call of each stage compiles."""
        compile_transformer(self.transformer, **options)
        return self

    def enable_offload(self, device=None) -> PyramidFlowPipeline:
        """Keep the text encoder and the autoencoder on the CPU and move each to ``device`` (default:
        the transformer's) only while it encodes or decodes; the transformer goes to ``device``."""
        device = self.device if device is None else torch.device(device)
        move_module(self.transformer, device)
        for module in (self.text_encoder, self.vae):
            if isinstance(module, torch.nn.Module):
                move_module(module, "cpu")
        self.offload = Offload(device)
        return self

    def enable_vae_tiling(self, tile_latent: int | None = 32,
                          overlap: int | None = None) -> PyramidFlowPipeline:
        """Decode in spatial tiles of ``tile_latent`` latent pixels overlapping by ``overlap`` (default a
        quarter tile), blended across seams (docs/maths.md section 17); None decodes whole frames."""
        self.tiling = vae_tiling(tile_latent, overlap)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype (its patch embedding's; some parameters stay float32)."""
        return self.transformer.patch_embedding.weight.dtype

    # ------------------------------------------------------------------ shapes
    def model_frames(self, num_frames: int) -> int:
        """Frames in model space for ``num_frames`` video frames; a clear error naming the nearest
        valid counts if they do not fit (the VAE's 1 + k*compression, units, the temporal pyramid)."""
        if num_frames < 1:
            raise PyramidflowError(f"num_frames must be >= 1, got {num_frames}")
        frames = self._frames_or_none(num_frames)
        if frames is None:
            below = [n for n in range(num_frames - 1, 0, -1) if self._frames_or_none(n) is not None][:1]
            above = next(n for n in range(num_frames + 1, 64 * num_frames + 64) if self._frames_or_none(n))
            raise PyramidflowError(f"num_frames={num_frames} does not fit this model ({self._frame_rule()}); "
                                   f"nearest valid counts: {', '.join(map(str, below + [above]))}")
        self.vae.check_frames(num_frames)
        return frames

    def _frame_rule(self) -> str:
        tc, f = self.vae.temporal_compression, self.config.temporal.frames_per_unit
        rules = [f"1 + {tc}k video frames"] if tc > 1 else []
        if self.config.temporal.autoregressive and f > 1:
            rules.append(f"model frames a multiple of {f}")
        if self._patch_frames() > 1:
            rules.append(f"model frames a multiple of {self._patch_frames()} (the patches of every stage)")
        pyramid_in_time = self.transform.temporal and self.schedule.num_stages > 1
        if pyramid_in_time and not self.config.temporal.autoregressive:
            levels = 2 ** (self.schedule.num_stages - 1)
            rules.append(f"model frames {'1 + ' if self.transform.causal_first_frame else ''}{levels}k "
                         f"for {self.schedule.num_stages} spatiotemporal stages")
        return ", ".join(rules) or "any count"

    def _frames_or_none(self, num_frames: int) -> int | None:
        tc = self.vae.temporal_compression
        if num_frames < 1 or (num_frames - 1) % tc:
            return None
        frames = 1 + (num_frames - 1) // tc
        if frames % self._patch_frames():
            return None
        if self.config.temporal.autoregressive:
            return None if frames % self.config.temporal.frames_per_unit else frames
        if self.transform.temporal:  # the clip itself is halved in time at every level
            levels = self.schedule.num_stages - 1
            try:
                self.transform.check_shape((1, 1, frames, 2**levels, 2**levels), levels)
            except PyramidflowError:
                return None
        return frames

    def _patch_frames(self) -> int:
        """Latent frames every stage's patches need a multiple of (a patchification pyramid's levels)."""
        sizes = patch_sizes_of(self.transformer) if self.config.pyramid.patchify else None
        return math.lcm(*(p[0] for p in sizes)) if sizes else 1

    def model_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """(B, C, T, h, w) in model space; a clear error for sizes the pyramid and patches cannot take."""
        scale = self.vae.spatial_compression
        _, ph, pw = self.transformer.config.patch_size
        levels = 2 ** (self.schedule.num_stages - 1)
        if self.config.pyramid.patchify:  # full resolution at every stage, in every level's patches
            sizes = patch_sizes_of(self.transformer)
            ph, pw, levels = math.lcm(*(p[1] for p in sizes)), math.lcm(*(p[2] for p in sizes)), 1
        for name, size, patch in (("height", height, ph), ("width", width, pw)):
            m = scale * levels * patch
            if size < m or size % m:
                raise PyramidflowError(f"{name} {size} does not fit this model ({self.schedule.num_stages} "
                                       f"stages, patch {patch}): it must be a multiple of {m} "
                                       f"(valid: {m}, {2 * m}, {3 * m}, ...)")
        self.model_frames(num_frames)
        c, t, h, w = self.vae.latent_shape(num_frames, height, width)
        return (batch, c, t, h, w)

    # ------------------------------------------------------------------ inputs / outputs
    def encode_prompt(self, prompts: Sequence[str], negative_prompt: str | Sequence[str] | None = None
                      ) -> tuple[Tensor, Tensor]:
        """(B, L, D) embeddings of the prompts and the unconditional ones of guidance: (1, L, D) of
        the empty prompt, or of the ``negative_prompt`` (one for all, or one per prompt: (B, L, D))."""
        negative = [""] if negative_prompt is None else prompt_list(negative_prompt)
        if len(negative) not in (1, len(prompts)):
            raise PyramidflowError(f"{len(negative)} negative prompts for {len(prompts)} prompts: give one, "
                                   "or one per prompt")
        with self.offload.using(self.text_encoder):
            text = self.text_encoder.encode(list(prompts))[0].to(self.device, self.dtype)
            null = self.text_encoder.encode(negative)[0].to(self.device, self.dtype)
        return text, null

    def encode_image(self, image, height: int, width: int) -> Tensor:
        """A first frame (path, PIL image, (H, W, 3) uint8 array or (3, H, W) tensor in [0, 1]),
        resized on the shorter side and centre-cropped to (height, width) -> (1, C, F, h, w)."""
        pixels = load_image(image, height, width).to(self.device)  # (3, H, W) in [0, 1]
        with self.offload.using(self.vae):  # float32: the sampling state
            latents = self.vae.encode(frames_to_model(pixels[None, None]).to(self.vae.dtype)).float()
        f = self.config.temporal.frames_per_unit
        if latents.shape[2] != f:
            raise PyramidflowError(f"image-to-video needs units of one model frame (an image encodes to "
                                   f"{latents.shape[2]}), this model has {f}")
        return latents  # (1, C, 1, h, w)

    def decode(self, latents: Tensor) -> Tensor:
        """Model-space (B, C, T, h, w) -> video (B, T, 3, H, W) in [0, 1]."""
        with self.offload.using(self.vae):
            return model_to_frames(self.vae.decode(latents.to(self.vae.dtype), **self.tiling))

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        image=None,
        num_inference_steps: Sequence[int] | None = None,
        first_steps: Sequence[int] | None = None,
        guidance_scale: float | None = None,
        video_guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        use_cache: bool = True,
        output_type: str = "np",
        progress: bool = True,
        callback_on_step_end: Callable | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        latents: Tensor | None = None,
        step_rule: str | None = None,
    ) -> PyramidFlowOutput:
        """Generate one clip per prompt. Unset arguments take the model's saved defaults.

        ``negative_prompt``: what guidance steers away from (default the empty prompt).
        ``latents``: full-sequence models: the starting noise, (B, C, T, h, w) at the coarsest
        stage's shape (default drawn from ``generator`` / ``seed``).
        ``step_rule``: "euler" or "x0_renoise" (default the model's saved ``sampling.step_rule``).
        ``callback_on_step_end(pipe, step_index, total_steps, info)``: see the module docstring.
        """
        cfg, s = self.config, self.config.sampling
        prompts = prompt_list(prompt)
        if output_type not in ("np", "pt"):
            raise PyramidflowError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        num_frames = cfg.frames if num_frames is None else int(num_frames)
        height = cfg.height if height is None else int(height)
        width = cfg.width if width is None else int(width)
        steps = tuple(s.steps if num_inference_steps is None else num_inference_steps)
        first = tuple(first_steps if first_steps is not None else (s.first_steps or steps))
        w_first = s.guidance if guidance_scale is None else float(guidance_scale)
        w_rest = video_guidance_scale if video_guidance_scale is not None else s.video_guidance
        w_rest = w_first if w_rest is None else float(w_rest)
        check_request(num_frames, w_first, w_rest, seed)
        warn_unknown_words(self.text_encoder, prompts)
        shape = self.model_shape(len(prompts), num_frames, height, width)
        ar = cfg.temporal.autoregressive
        unit = (*shape[:2], cfg.temporal.frames_per_unit, *shape[3:]) if ar else shape
        self.transform.check_shape(unit, self.schedule.num_stages - 1)
        self.schedule.check_steps(steps)
        self.schedule.check_steps(first)
        if generator is None:
            generator = torch.Generator(self.device).manual_seed(0 if seed is None else int(seed))
        text, null = self.encode_prompt(prompts, negative_prompt)
        guided = w_first != 1.0 or w_rest != 1.0
        model = BatchSplit(self.transformer) if self.parallel == "cfg" else self.transformer
        prefix = []
        if image is not None:
            if not ar:
                raise PyramidflowError("image-to-video needs an autoregressive model (temporal.mode: "
                                       "autoregressive); this one generates full sequences")
            prefix = [self.encode_image(image, height, width).expand(len(prompts), -1, -1, -1, -1)]
        bar = _Progress(progress, self._evaluations(shape, steps, first, len(prefix)),
                        callback_on_step_end and (lambda *a: callback_on_step_end(self, *a)))
        rule = rule_named(step_rule or s.step_rule)  # the saved rule: Euler, or x0 re-noising (few-step)
        if ar and latents is not None:
            raise PyramidflowError("latents= (the starting noise) is for full-sequence models; an "
                                   "autoregressive one draws each unit's noise from the generator")
        if ar:
            f = cfg.temporal.frames_per_unit
            both = torch.cat([null.expand_as(text), text]) if guided else text
            velocity = UnitVelocity(model, both, self.schedule.num_stages, use_cache=use_cache)
            fn = GuidedUnitVelocity(velocity, w_first, w_rest) if guided else velocity
            latents = generate_units(bar.wrap(fn), self.schedule, self.transform, unit, shape[2] // f,
                                     steps, first, generator, prefix, dtype=torch.float32,
                                     max_history=cfg.temporal.max_history, step_rule=rule)
        else:
            fn = guided_velocity(model, text, null if guided else None, w_rest, w_first,
                                 self.transform, patchify=cfg.pyramid.patchify)
            latents = sample(bar.wrap(fn), self.schedule, self.transform, shape, steps, generator,
                             device=self.device, noise=latents, step_rule=rule,
                             transition=cfg.pyramid.transition())
        bar.close()
        video = self.decode(latents)  # cast to the autoencoder's dtype there
        if output_type == "np":
            frames = (video * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
            return PyramidFlowOutput(frames, latents)
        return PyramidFlowOutput(video, latents)

    def _evaluations(self, shape, steps, first, given: int) -> int:
        if not self.config.temporal.autoregressive:
            return sum(steps)
        units = shape[2] // self.config.temporal.frames_per_unit
        return sum(first) * (given == 0) + sum(steps) * (units - max(given, 1))


class _Progress:
    """A tqdm bar ticked once per network evaluation, and the step callback called there too.

    ``callback(step_index, total, info)``; ``info``: ``stage``, ``unit`` and ``sigma`` of the evaluation.
    """

    def __init__(self, enabled: bool, total: int, callback: Callable | None = None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not enabled, desc="sample", dynamic_ncols=True)
        self.total, self.callback, self.done = total, callback, 0

    def wrap(self, fn: Callable) -> Callable:
        def f(x, sigma, stage, *rest):
            out = fn(x, sigma, stage, *rest)
            self.bar.update(1)
            if self.callback is not None:
                unit = rest[1] if len(rest) > 1 else None  # autoregressive: (history, unit)
                self.callback(self.done, self.total, {"stage": stage, "unit": unit, "sigma": sigma})
            self.done += 1
            return out

        return f

    def close(self) -> None:
        self.bar.close()
