"""``PyramidalWanPipeline``: a diffusers Wan2.1 text-to-video model sampled through the pyramid.

PyramidalWan (docs/maths.md sections 2-5) runs a pretrained Wan over three spatiotemporal stages of
its causal latents: the first latent frame is halved spatially, the rest in 2x2x2 blocks, so 81
frames at 448x832 are 21x56x104 latents at full resolution, 11x28x52 and 6x14x26 below. The network
is conditioned on the *natural* noise level of each stage (1000 x sigma, what a pretrained Wan
understands); the jump between stages re-noises as in section 5.

Two folder layouts load:

* a diffusers ``WanPipeline`` folder (:mod:`pyramidflow.models.wan_folder`). Without ``pyramid`` it
  is sampled as Wan samples it: one full-resolution stage, the scheduler's shift, ``generation.json``'s
  defaults (or Wan's 81x480x832, 50 steps, guidance 5); with ``pyramid`` (a :class:`PyramidConfig`
  or a dict of its fields) through that pyramid, by default 3 stages with (20, 20, 10) steps;
* a folder this class saved: the same component folders, ``model_index.json`` naming
  ``PyramidalWanPipeline`` with the :class:`PipelineConfig` under ``"config"``, and checksums.

Wan's frame counts are 1 + 4k; with the temporal pyramid the latent frames must also halve K - 1
times (1 + 4k latents for 3 stages: 17, 33, 49, 65, 81 frames). Other counts are a one-line error
naming the nearest valid ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pyramidflow import __version__
from pyramidflow.config import to_dict
from pyramidflow.errors import PyramidflowError
from pyramidflow.io.checksums import write_checksums, write_json
from pyramidflow.models.lora import attach_stage_adapters, split_stage_adapters
from pyramidflow.pipelines.pyramid_flow import PyramidFlowOutput, PyramidFlowPipeline
from pyramidflow.pipelines.wan_loading import SAVED_CLASS, load_wan_parts
from pyramidflow.pyramid.config import PyramidConfig


class PyramidalWanPipeline(PyramidFlowPipeline):
    """A Wan2.1 T2V model sampled through a spatiotemporal pyramid; see the module docstring."""

    @classmethod
    def from_pretrained(cls, path: str | Path, pyramid: PyramidConfig | dict | None = None, device=None,
                        torch_dtype: torch.dtype | None = None) -> PyramidalWanPipeline:
        """A diffusers ``WanPipeline`` folder (``pyramid``: how to sample it, module docstring) or a
        folder saved by :meth:`save_pretrained`."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no Wan pipeline folder at {path}")
        parts = load_wan_parts(path, pyramid, torch_dtype)
        attach_stage_adapters(parts[0], Path(path) / "lora")
        pipe = cls(*parts)
        return pipe.to(device or "cpu")  # parts are loaded in their dtypes (the VAE stays float32)

    def save_pretrained(self, path: str | Path, weights_dtype: torch.dtype | None = None) -> Path:
        """Write the Wan layout (transformer/, vae/, text_encoder/, tokenizer/, scheduler/) with
        ``model_index.json`` naming this class and holding the config; safetensors, checksums."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            split_stage_adapters(self.transformer, path / "lora").save_pretrained(path / "transformer")
            self.vae.vae.save_pretrained(path / "vae")
            self.text_encoder.model.save_pretrained(path / "text_encoder")
        self.text_encoder.tokenizer.save_pretrained(path / "tokenizer")
        FlowMatchEulerDiscreteScheduler(shift=self.config.pyramid.shift).save_pretrained(path / "scheduler")
        index = {
            "_class_name": SAVED_CLASS, "_pyramidflow_version": __version__,
            "transformer": ["pyramidflow", type(self.transformer).__name__],
            "vae": ["diffusers", "AutoencoderKLWan"],
            "text_encoder": ["transformers", type(self.text_encoder.model).__name__],
            "tokenizer": ["transformers", type(self.text_encoder.tokenizer).__name__],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "config": to_dict(self.config),
        }
        write_json(path / "model_index.json", index)
        write_checksums(path, exclude=["model_index.json"])
        return path

    def export_wan_pipeline(self, path: str | Path) -> Path:
        """Write a genuine diffusers ``WanPipeline`` folder (``WanPipeline.from_pretrained`` and its own
        sampler read it) plus ``generation.json`` with this pipeline's defaults (``height``,
        ``width``, ``num_frames``, ``num_inference_steps``, ``guidance_scale``). Only for one-stage
        models: diffusers samples at full resolution, which a pyramidal model is not trained for."""
        import inspect

        from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

        cfg = self.config
        if cfg.pyramid.num_stages != 1:
            raise PyramidflowError(f"a WanPipeline folder samples one full-resolution stage; this model has "
                                   f"{cfg.pyramid.num_stages} (save it with save_pretrained instead)")
        accepted = inspect.signature(WanTransformer3DModel.__init__).parameters
        kwargs = {k: v for k, v in self.transformer.config.items() if k in accepted}
        with torch.device("meta"):
            wan = WanTransformer3DModel(**kwargs)
        wan.load_state_dict(self.transformer.state_dict(), strict=True, assign=True)
        pipe = WanPipeline(tokenizer=self.text_encoder.tokenizer, text_encoder=self.text_encoder.model,
                           vae=self.vae.vae, transformer=wan,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.pyramid.shift))
        path = Path(path)
        pipe.save_pretrained(path)
        generation = {"height": cfg.height, "width": cfg.width, "num_frames": cfg.frames,
                      "num_inference_steps": int(cfg.sampling.steps[0]),
                      "guidance_scale": cfg.sampling.guidance}
        if cfg.travel_frames is not None:
            generation["travel_frames"] = cfg.travel_frames
        write_json(path / "generation.json", generation)
        return path

    @torch.no_grad()
    def __call__(  # diffusers' WanPipeline argument order
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | Sequence[int] | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        callback_on_step_end=None,
        seed: int | None = None,
        progress: bool = True,
    ) -> PyramidFlowOutput:
        """Generate one clip per prompt; guidance (one scale for every frame, as Wan) steers away from
        ``negative_prompt``. ``num_inference_steps``: steps per stage, e.g. (20, 20, 10); a single
        number for a one-stage pipeline. ``latents``: the starting noise at the coarsest stage."""
        if isinstance(num_inference_steps, int):
            num_inference_steps = (num_inference_steps,)
        g = guidance_scale if guidance_scale is not None else self.config.sampling.guidance
        return super().__call__(prompt, num_frames=num_frames, height=height, width=width,
                                num_inference_steps=num_inference_steps, guidance_scale=g,
                                video_guidance_scale=g, generator=generator, seed=seed,
                                output_type=output_type, progress=progress,
                                callback_on_step_end=callback_on_step_end, negative_prompt=negative_prompt,
                                latents=latents)
