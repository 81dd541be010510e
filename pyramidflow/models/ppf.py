"""PPFDiT: pyramidal patchification (docs/maths.md section 9) on top of :class:`PyramidDiT`.

Instead of lowering the resolution, early (noisy) stages cut the full-resolution latent into larger
patches: stage i runs at patch level i, coarse to fine, e.g. ``ppf_patch_sizes = [[1, 4, 4], [1, 2, 2]]``
(4x fewer tokens at level 0). Each level has its own patch embedding (a Conv3d like ``patch_embedding``)
and output projection (like ``proj_out``); the blocks, the time and text embeddings are shared. The
finest level is the model's own ``patch_size`` and uses the base class's ``patch_embedding`` and
``proj_out``, so the state dict of a Wan / PyramidDiT checkpoint loads unchanged and the coarser levels
add ``ppf_embeddings.{i}`` and ``ppf_proj_outs.{i}``. A coarse token sits at the centre of the fine
tokens it covers on the fine token grid (fractional rotary positions, :meth:`TokenSegment.placement`).

The level of a call: ``forward(..., patch_level=i)`` or ``TokenSegment(..., patch_level=i)``; None is
the finest level, where the model is exactly :class:`PyramidDiT` (and diffusers' Wan). The sampler's
per-stage velocity ``f(x, sigma, stage)`` of a PPFDiT is
``pyramidflow.pipelines.guidance.guided_velocity(model, text, patchify=True)`` (stage i at level i),
sampled with ``PyramidConfig(patchify=True).build()`` and ``identity_transition``.
:meth:`PPFDiT.from_transformer` converts a trained one-patch model (docs/maths.md (9.7)):

* embedding: the coarse kernel is the fine kernel with each tap spread over an r-block of the coarse
  patch (r = coarse patch / fine patch per axis), divided by the block size, and the fine bias, so
  ``coarse_conv(patch) == fine_conv(avg_pool_r(patch))``;
* output: the row of position (t, i, j) of the coarse patch is the fine row of (t // r_t, i // r_h,
  j // r_w): the coarse prediction is the fine one nearest-upsampled by r.

A coarse level therefore starts as the model run on the r-times average-pooled latent with its
prediction nearest-upsampled, its tokens placed where the pooled tokens' centres are.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils import apply_lora_scale
from torch import Tensor, nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.linear import Linear
from pyramidflow.models.parallel import ULYSSES_PLAN
from pyramidflow.models.segments import TextCache, TokenSegment
from pyramidflow.models.transformer import PyramidDiT

Patch = tuple[int, int, int]


def check_patch_sizes(patch_sizes: Sequence[Sequence[int]] | None,
                      patch_size: Sequence[int]) -> tuple[Patch, ...]:
    """The per-level patch sizes, coarse to fine (None: the model's one ``patch_size``), checked.

    Each is (t, h, w) positive integers, a multiple of ``patch_size`` on every axis (a coarse patch is
    a whole number of fine patches), with strictly decreasing volumes; the last is ``patch_size``.
    """
    fine = tuple(int(p) for p in patch_size)
    if patch_sizes is None:
        return (fine,)
    levels = []
    for p in patch_sizes:
        if (isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != 3
                or any(isinstance(q, bool) or not isinstance(q, int) or q < 1 for q in p)):
            raise PyramidflowError(f"ppf_patch_sizes: every patch must be three positive integers (t, h, w), "
                                   f"got {p!r}")
        levels.append(tuple(int(q) for q in p))
    if not levels or levels[-1] != fine:
        raise PyramidflowError(f"ppf_patch_sizes must end with the model's patch_size {fine} (the finest "
                               f"level), got {levels[-1] if levels else 'no patch'}")
    for p in levels:
        if any(q % f for q, f in zip(p, fine, strict=True)):
            raise PyramidflowError(f"ppf_patch_sizes: patch {p} is not a multiple of the model's patch_size "
                                   f"{fine} on every axis")
    volumes = [math.prod(p) for p in levels]
    if any(b >= a for a, b in zip(volumes, volumes[1:], strict=False)):
        raise PyramidflowError(f"ppf_patch_sizes must run coarse to fine with strictly smaller patches, got "
                               f"{[list(p) for p in levels]}")
    return tuple(levels)


class PPFDiT(PyramidDiT):
    """:class:`PyramidDiT` with one patch embedding and output projection per patch level.

    Config: PyramidDiT's keys plus ``ppf_patch_sizes`` (coarse to fine, the last equal to
    ``patch_size``; None: the one level ``patch_size``). See the module docstring.
    """

    _skip_layerwise_casting_patterns = [*PyramidDiT._skip_layerwise_casting_patterns, "ppf_embeddings"]
    # sequence parallelism: every level's output projection is gathered like proj_out
    _cp_plan = {**ULYSSES_PLAN, "ppf_proj_outs.*": ULYSSES_PLAN["proj_out"]}

    @register_to_config
    def __init__(
        self,
        patch_size: Sequence[int] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        rope_theta: float = 10000.0,
        attention_backend: str = "auto",
        ppf_patch_sizes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(  # by keyword: the base registers its keys again, with the same values
            patch_size=patch_size, num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim, in_channels=in_channels, out_channels=out_channels,
            text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim, num_layers=num_layers,
            cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps, image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim, rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len, rope_theta=rope_theta, attention_backend=attention_backend)
        self.patch_sizes = check_patch_sizes(ppf_patch_sizes, patch_size)
        dim, out = num_attention_heads * attention_head_dim, out_channels or in_channels
        coarse = self.patch_sizes[:-1]
        self.ppf_embeddings = nn.ModuleList([nn.Conv3d(in_channels, dim, p, stride=p) for p in coarse])
        self.ppf_proj_outs = nn.ModuleList([Linear(dim, out * math.prod(p)) for p in coarse])

    def _patch_level(self, level: int | None) -> tuple[tuple[int, ...], nn.Module, nn.Module]:
        n = len(self.patch_sizes)
        if level is None or level == n - 1:
            return self.patch_sizes[-1], self.patch_embedding, self.proj_out
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < n:
            raise PyramidflowError(f"patch level {level!r} is out of range: this model has levels 0..{n - 1} "
                                   f"(patches {[list(p) for p in self.patch_sizes]})")
        return self.patch_sizes[level], self.ppf_embeddings[level], self.ppf_proj_outs[level]

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor | None,
        encoder_hidden_states_image: Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        text_cache: TextCache | None = None,
        patch_level: int | None = None,
    ) -> Transformer2DModelOutput | tuple[Tensor]:
        """:meth:`PyramidDiT.forward` at patch level ``patch_level`` (None: the finest, exactly PyramidDiT).

        hidden_states: (B, C, F, H, W), each of F, H, W divisible by the level's patch; timestep: (B,)
        or per token (B, tokens of the level). Returns (B, out_channels, F, H, W).
        """
        if encoder_hidden_states_image is not None:
            raise PyramidflowError("PPFDiT has no image embedding: encoder_hidden_states_image must be None")
        segment = TokenSegment(hidden_states, timestep, patch_level=patch_level)
        out = self.forward_tokens([segment], encoder_hidden_states, text_cache=text_cache)[0]
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_transformer(cls, model: nn.Module, patch_sizes: Sequence[Sequence[int]]) -> PPFDiT:
        """A PPFDiT holding a copy of every weight of ``model`` (a :class:`PyramidDiT` or diffusers'
        ``WanTransformer3DModel``), its coarser levels initialised by :meth:`init_coarse_levels`.

        The copy is independent of ``model`` (a frozen teacher stays as it is) and has its dtype and
        device. ``patch_sizes``: coarse to fine, the last the model's ``patch_size``.
        """
        if isinstance(model, PPFDiT):
            raise PyramidflowError("the model already has patch levels; from_transformer converts a "
                                   "one-patch transformer (PyramidDiT or WanTransformer3DModel)")
        accepted = inspect.signature(PyramidDiT.__init__).parameters
        config = {k: v for k, v in model.config.items() if k in accepted and k != "self"}
        check_patch_sizes(patch_sizes, config.get("patch_size", (1, 2, 2)))
        with torch.device("meta"):
            ppf = cls(**config, ppf_patch_sizes=[list(p) for p in patch_sizes])
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        missing, unexpected = ppf.load_state_dict(state, strict=False, assign=True)
        extra = [k for k in missing if not k.startswith(("ppf_embeddings.", "ppf_proj_outs."))]
        if extra or unexpected:
            names = (unexpected or extra)[:3]
            which = "unexpected" if unexpected else "missing"
            raise PyramidflowError(f"{type(model).__name__} does not match a PyramidDiT's parameters "
                                   f"({which} {names}; merge a LoRA first)")
        weight = ppf.patch_embedding.weight
        for module in (*ppf.ppf_embeddings, *ppf.ppf_proj_outs):
            module.to_empty(device=weight.device).to(weight.dtype)
        ppf.init_coarse_levels()
        return ppf.train(model.training)

    @torch.no_grad()
    def init_coarse_levels(self) -> None:
        """Set every coarser level from the finest (module docstring, docs/maths.md section 9).

        Embedding: kernel (dim, C, pt, ph, pw) -> each tap repeated over an r-block, / (r_t r_h r_w);
        the bias as it is. Output: rows ordered (t, h, w, channel) -> position (t, i, j) of the coarse
        patch takes the fine row of (t // r_t, i // r_h, j // r_w); the bias likewise.
        """
        fine = self.patch_sizes[-1]
        kernel = self.patch_embedding.weight  # (dim, C, pt, ph, pw)
        w_out = self.proj_out.weight  # (C * pt * ph * pw, dim)
        for level, patch in enumerate(self.patch_sizes[:-1]):
            r = [q // f for q, f in zip(patch, fine, strict=True)]
            k = kernel
            for axis, n in enumerate(r):
                k = k.repeat_interleave(n, dim=2 + axis)
            embed, proj = self.ppf_embeddings[level], self.ppf_proj_outs[level]
            embed.weight.copy_(k / math.prod(r))
            embed.bias.copy_(self.patch_embedding.bias)
            rows = w_out.view(*fine, -1, w_out.shape[1])  # (pt, ph, pw, C, dim)
            bias = self.proj_out.bias.view(*fine, -1)  # (pt, ph, pw, C)
            for axis, n in enumerate(r):
                rows, bias = rows.repeat_interleave(n, dim=axis), bias.repeat_interleave(n, dim=axis)
            proj.weight.copy_(rows.reshape(-1, w_out.shape[1]))
            proj.bias.copy_(bias.reshape(-1))


def patch_sizes_of(model: nn.Module) -> tuple[Patch, ...] | None:
    """The patch sizes per level of a patchification model (coarse to fine), None for a one-patch model."""
    return model.patch_sizes if isinstance(model, PPFDiT) else None


def transformer_class(folder: str | Path) -> type[PyramidDiT]:
    """The class a saved transformer folder is read with: :class:`PPFDiT` when its ``config.json``
    names it, else :class:`PyramidDiT` (which also reads diffusers' Wan transformers)."""
    try:
        name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None  # missing or unreadable: from_pretrained says what is wrong
    return PPFDiT if name == PPFDiT.__name__ else PyramidDiT


def load_transformer(folder: str | Path, **kwargs) -> PyramidDiT:
    """``from_pretrained(folder, **kwargs)`` of :func:`transformer_class`."""
    return transformer_class(folder).from_pretrained(folder, **kwargs)


def check_stage_levels(model: nn.Module, pyramid) -> None:
    """A patchification pyramid (``pyramid.patchify``, a :class:`PyramidConfig`) runs stage i at patch
    level i: it needs a :class:`PPFDiT` with one level per stage (one-line error otherwise)."""
    if not pyramid.patchify:
        return
    sizes = patch_sizes_of(model)
    if sizes is None:
        raise PyramidflowError(f"pyramid.patchify needs a transformer with patch levels (PPFDiT, "
                               f"model.ppf_patch_sizes), got a {type(model).__name__}")
    if len(sizes) != pyramid.num_stages:
        raise PyramidflowError(f"pyramid.patchify runs stage i at patch level i: the transformer has "
                               f"{len(sizes)} levels {[list(p) for p in sizes]}, the pyramid "
                               f"{pyramid.num_stages} stages")
