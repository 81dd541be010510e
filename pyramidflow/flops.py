"""FLOP accounting for the Wan transformer family over a pyramid (docs/maths.md section 8).

Counting rule (PyramidalWan Table 1): 2 FLOPs per multiply-add in every linear layer (patch
embedding, time/text embeddings, attention projections, FFN, output head) plus the attention
products (QK^T and AV) of self- and cross-attention; one forward pass, no CFG unless asked.
Norms, RoPE, softmax and activations are not counted (they are O(tokens * width)).

With N video tokens, L text tokens, width d, FFN width F, one block costs in multiply-adds:

    self-attention   4 N d^2 (q, k, v, o)  + 2 N^2 d (scores, values)
    cross-attention  2 N d^2 (q, o) + 2 L d^2 (k, v of the text) + 2 N L d
    feed-forward     2 N d F

The text's own part (the text MLP and every block's k, v of the text) does not depend on the video:
:func:`text_flops`; a text cache computes it once per batch of prompts (``cached_text=True``).

A patchification pyramid (PPF, docs/maths.md section 9; ``TransformerSpec.ppf_patch_sizes``) keeps
the full-resolution latent at every stage and cuts stage i into patch level i's patches: N is the
latent's volume over that patch's, and the embedding and head scale with its volume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid.transforms import HaarTransform, IdentityTransform


@dataclass(frozen=True)
class TransformerSpec:
    """The sizes of a Wan-style transformer that determine its FLOPs."""

    num_layers: int
    dim: int  # num_attention_heads * attention_head_dim
    ffn_dim: int
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512  # text tokens seen by cross-attention
    text_dim: int = 4096
    freq_dim: int = 256
    ppf_patch_sizes: tuple[tuple[int, int, int], ...] | None = None  # patch per stage (PPF), coarse to fine

    @classmethod
    def from_config(cls, config: Mapping, text_len: int = 512) -> TransformerSpec:
        """From a ``WanTransformer3DModel`` / ``PyramidDiT`` / ``PPFDiT`` config dict (``config.json``)."""
        try:
            dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
            levels = config.get("ppf_patch_sizes")
            return cls(
                num_layers=int(config["num_layers"]),
                dim=dim,
                ffn_dim=int(config["ffn_dim"]),
                in_channels=int(config.get("in_channels", 16)),
                out_channels=int(config.get("out_channels") or config.get("in_channels", 16)),
                patch_size=tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
                text_len=int(text_len),
                text_dim=int(config.get("text_dim", 4096)),
                freq_dim=int(config.get("freq_dim", 256)),
                ppf_patch_sizes=None if levels is None else tuple(tuple(int(q) for q in p) for p in levels),
            )
        except KeyError as err:
            raise PyramidflowError(f"transformer config lacks the key {err.args[0]!r}") from None


@dataclass(frozen=True)
class VideoAutoencoderSpec:
    """How a VAE maps video frames and pixels to latents (causal first frame in time)."""

    temporal: int = 4
    spatial: int = 8

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        if frames < 1 or (frames - 1) % self.temporal:
            raise PyramidflowError(
                f"frames {frames} do not fit the VAE: need 1 + k*{self.temporal} frames "
                f"(valid: 1, {1 + self.temporal}, {1 + 2 * self.temporal}, ...)"
            )
        for name, size in (("height", height), ("width", width)):
            if size < self.spatial or size % self.spatial:
                raise PyramidflowError(
                    f"{name} {size} is not a multiple of the VAE's spatial factor {self.spatial}"
                )
        return (1 + (frames - 1) // self.temporal, height // self.spatial, width // self.spatial)


WAN_VAE = VideoAutoencoderSpec(temporal=4, spatial=8)

PRESETS: dict[str, TransformerSpec] = {
    "wan2.1-t2v-1.3b": TransformerSpec(num_layers=30, dim=1536, ffn_dim=8960),
    "wan2.1-t2v-14b": TransformerSpec(num_layers=40, dim=5120, ffn_dim=13824),
}


def tokens(spec: TransformerSpec, latent_thw: Sequence[int]) -> int:
    """Video tokens of a (T, H, W) latent after patchification."""
    t, h, w = (int(v) for v in latent_thw)
    pt, ph, pw = spec.patch_size
    for name, size, p in (("frames", t, pt), ("height", h, ph), ("width", w, pw)):
        if size % p:
            raise PyramidflowError(f"latent {name} {size} is not divisible by the patch size {p}")
    return (t // pt) * (h // ph) * (w // pw)


def text_flops(spec: TransformerSpec) -> float:
    """FLOPs of the text-only part of one forward pass (batch 1): the text embedding MLP and every
    block's cross-attention keys and values of the text (docs/maths.md section 15)."""
    d, text = float(spec.dim), float(spec.text_len)
    return 2.0 * (spec.num_layers * 2 * text * d * d + text * (spec.text_dim * d + d * d))


def forward_flops(spec: TransformerSpec, num_tokens: int, cached_text: bool = False) -> float:
    """FLOPs of one forward pass on ``num_tokens`` video tokens (batch 1); with ``cached_text``
    without :func:`text_flops` (computed once per batch of prompts instead of once per pass)."""
    n, d, f, text = float(num_tokens), float(spec.dim), float(spec.ffn_dim), float(spec.text_len)
    patch = math.prod(spec.patch_size)
    block = (
        4 * n * d * d + 2 * n * n * d  # self-attention
        + 2 * n * d * d + 2 * text * d * d + 2 * n * text * d  # cross-attention
        + 2 * n * d * f  # feed-forward
    )
    embed = (
        n * spec.in_channels * patch * d  # patch embedding
        + spec.freq_dim * d + d * d + d * 6 * d  # time embedding and modulation projection
        + text * (spec.text_dim * d + d * d)  # text embedding MLP
    )
    head = n * d * spec.out_channels * patch
    total = 2.0 * (spec.num_layers * block + embed + head)
    return total - text_flops(spec) if cached_text else total


def schedule_flops(
    spec: TransformerSpec,
    latent_shape: Sequence[int],
    steps: Sequence[int],
    transform: HaarTransform | IdentityTransform,
    cfg: bool = False,
) -> dict:
    """Tokens and FLOPs per stage and in total for a pyramid over a (T, H, W) latent.

    ``steps`` has one entry per stage, coarse to fine; 0 steps skips a stage. A spec with
    ``ppf_patch_sizes`` (one per stage) counts stage i at full resolution in level i's patches, with
    an :class:`IdentityTransform`. Returns ``{"total_tflops", "per_stage": [{"stage", "latent_shape",
    "patch_size", "tokens", "steps", "tflops_per_step", "tflops"}]}``.
    """
    steps = [int(s) for s in steps]
    if not steps or any(s < 0 for s in steps):
        raise PyramidflowError(f"steps must be non-negative integers, one per stage, got {steps}")
    k = len(steps)
    levels_of = spec.ppf_patch_sizes
    if levels_of is not None and (len(levels_of) != k or not isinstance(transform, IdentityTransform)):
        raise PyramidflowError(f"a patchification spec ({len(levels_of)} patch levels) counts one level per "
                               f"stage at full resolution: give {len(levels_of)} step counts and an "
                               f"IdentityTransform, got {k} steps and {transform!r}")
    t, h, w = (int(v) for v in latent_shape)
    per_stage = []
    for stage, n_steps in enumerate(steps):
        levels = k - 1 - stage
        _, _, st, sh, sw = transform.shape_at((1, 1, t, h, w), levels)
        level = spec if levels_of is None else replace(spec, patch_size=levels_of[stage],
                                                       ppf_patch_sizes=None)
        n_tok = tokens(level, (st, sh, sw))
        per_step = forward_flops(level, n_tok) * (2 if cfg else 1) / 1e12
        per_stage.append(
            {
                "stage": stage,
                "latent_shape": [st, sh, sw],
                "patch_size": list(level.patch_size),
                "tokens": n_tok,
                "steps": n_steps,
                "tflops_per_step": per_step,
                "tflops": per_step * n_steps,
            }
        )
    return {"total_tflops": sum(s["tflops"] for s in per_stage), "per_stage": per_stage}


def spec_dict(spec: TransformerSpec) -> dict:
    out = asdict(spec)
    out["patch_size"] = list(spec.patch_size)
    if spec.ppf_patch_sizes is not None:
        out["ppf_patch_sizes"] = [list(p) for p in spec.ppf_patch_sizes]
    return out
