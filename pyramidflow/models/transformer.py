"""PyramidDiT: Wan's video transformer, extended for pyramids (docs/maths.md sections 3 and 7).

Weight- and call-compatible with diffusers' ``WanTransformer3DModel`` (same parameter names and
config keys; ``forward(hidden_states, timestep, encoder_hidden_states)`` gives the same output,
per-token timesteps included). Beside it, a token-level API for pyramidal and autoregressive use:

* :meth:`PyramidDiT.forward_tokens`: a list of :class:`TokenSegment` (current stage, compressed
  history), each with its own timestep, fractional (t, h, w) rotary positions on the reference
  grid, and unit index; attention is block-causal over units.
* :meth:`PyramidDiT.build_history_cache`: history keys/values computed once per stage and reused
  by every denoising step of the current unit (history has its own timestep).
* :meth:`PyramidDiT.build_text_cache`: the text's cross-attention keys/values computed once per
  batch of prompts and reused by every step (``text_cache=`` of the calls above).
* :meth:`PyramidDiT.forward_packed`: samples with different token counts (different stages)
  packed into one sequence with per-sample attention, for mixed-stage training.

Inference can shard the token sequence over several processes (Ulysses attention through diffusers'
context-parallel hooks and the ``_cp_plan`` below): :func:`pyramidflow.models.parallel.enable_ulysses`.

Image-to-video Wan variants (``image_dim``, ``added_kv_proj_dim``, ``pos_embed_seq_len``) are not
supported and are rejected at construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import apply_lora_scale
from torch import Tensor, nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.attention import BACKENDS, Attention, AttentionLayout
from pyramidflow.models.embeddings import FeedForward, FP32LayerNorm, TimeTextEmbedding
from pyramidflow.models.linear import Linear
from pyramidflow.models.parallel import (
    ULYSSES_PLAN,
    TokenSplit,
    UlyssesExchange,
    local_tables,
    pad_tokens,
    token_entries,
    ulysses_config,
)
from pyramidflow.models.rope import grid_rotation
from pyramidflow.models.segments import TEXT_UNIT, HistoryCache, Modulation, TextCache, TokenSegment


class PyramidDiTBlock(nn.Module):
    """Wan block: modulated self-attention, cross-attention to text, modulated FFN."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, cross_attn_norm: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = Attention(dim, heads, eps)
        self.attn2 = Attention(dim, heads, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, ffn_dim)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, text: Tensor | None, mod: Modulation, rope: Tensor,
                self_layout: AttentionLayout | None, cross_layout: AttentionLayout | None,
                past: tuple[Tensor, Tensor] | None = None, backend: str = "auto",
                text_kv: tuple[Tensor, Tensor] | None = None, exchange=None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (B, S, dim); text: (B, L, dim), or None with ``text_kv``, this block's cross-attention keys
        and values of the text (B, L, heads, head_dim) from a :class:`TextCache`; rope: complex
        rotations (``rope.grid_rotation``); exchange: the sequence-parallel all-to-all
        (:mod:`pyramidflow.models.parallel`), x then being this process's token shard.

        Returns x and this block's self-attention keys/values.
        """
        shift, scale, gate, c_shift, c_scale, c_gate = mod.vectors(self.scale_shift_table)
        h = mod.apply(self.norm1.modulate, [x], [scale, shift])
        out, kv = self.attn1(h, rope=rope, layout=self_layout, past=past, backend=backend, exchange=exchange)
        x = mod.apply(_gated_add, [x, out], [gate])
        h = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(h, context=text, layout=cross_layout, backend=backend, context_kv=text_kv)[0]
        h = mod.apply(self.norm3.modulate, [x], [c_scale, c_shift])
        x = mod.apply(_gated_add, [x, self.ffn(h)], [c_gate])
        return x, kv


def _gated_add(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """``x + y * gate`` in float32, cast to x's dtype (one fused kernel when x and y are float32)."""
    if x.dtype == y.dtype == torch.float32:
        return torch.addcmul(x, y, gate)
    return (x.float() + y.float() * gate).type_as(x)


class _Tokens:
    """Patchified segments ready for the blocks (one sequence, possibly several samples)."""

    def __init__(self, x, rope, timesteps, repeats, units, samples, grids):
        self.x = x  # (B, S, dim)
        self.rope = rope  # complex rotations (1, S, 1, head_dim / 2), rope.grid_rotation
        self.timesteps = timesteps  # (B, M)
        self.repeats = repeats  # list of M ints: tokens per timestep entry
        self.units, self.samples = units, samples  # (S,) long each
        self.grids = grids  # per segment (f, h, w, patch level, tokens)


class PyramidDiT(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Wan-compatible diffusion transformer for pyramidal flow matching.

    Config keys are those of diffusers' ``WanTransformer3DModel`` plus ``rope_theta`` and
    ``attention_backend`` ("auto": SDPA, with FlexAttention for irregular masks on CUDA; "sdpa";
    "flex"). ``rope_max_seq_len`` is kept for compatibility: positions here are not limited.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["PyramidDiTBlock"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]
    _keys_to_ignore_on_load_unexpected = ["norm_added_q"]
    _cp_plan = ULYSSES_PLAN  # sequence parallelism: pyramidflow.models.parallel.enable_ulysses
    _repeated_blocks = ["PyramidDiTBlock"]  # compile_repeated_blocks: one compiled block serves all

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
    ) -> None:
        super().__init__()
        unsupported = {k: v for k, v in (("image_dim", image_dim), ("added_kv_proj_dim", added_kv_proj_dim),
                                         ("pos_embed_seq_len", pos_embed_seq_len)) if v is not None}
        if unsupported:
            raise PyramidflowError(f"PyramidDiT does not support Wan image-to-video extras {unsupported}: "
                             "these keys must be null (text-to-video Wan2.1 / Wan2.2 configs)")
        if qk_norm != "rms_norm_across_heads":
            raise PyramidflowError(f"qk_norm={qk_norm!r} is not supported: "
                                   "the valid value is 'rms_norm_across_heads'")
        if attention_backend not in BACKENDS:
            raise PyramidflowError(f"unknown attention_backend {attention_backend!r}: "
                                   f"valid are {', '.join(BACKENDS)}")
        if len(patch_size) != 3:
            raise PyramidflowError(f"patch_size must be (t, h, w), got {patch_size}")
        dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        patch = tuple(patch_size)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)
        self.condition_embedder = TimeTextEmbedding(dim, freq_dim, text_dim)
        self.blocks = nn.ModuleList(
            [PyramidDiTBlock(dim, ffn_dim, num_attention_heads, cross_attn_norm, eps)
             for _ in range(num_layers)]
        )
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = Linear(dim, out_channels * math.prod(patch_size))
        self.token_split = TokenSplit()  # where sequence parallelism cuts the tokens (no parameters)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False

    def set_attention_backend(self, backend: str) -> None:
        """Choose this model's attention kernels: "auto", "sdpa" or "flex" (docs/maths.md section 13).

        PyramidDiT's attention is its own (block-causal plans), not diffusers' processors, so this sets
        the ``attention_backend`` config key that every call reads.
        """
        if backend not in BACKENDS:
            raise PyramidflowError(f"unknown attention backend {backend!r}: valid are {', '.join(BACKENDS)}")
        self.register_to_config(attention_backend=backend)

    # ------------------------------------------------------------------ inputs
    def _segment_tokens(self, seg: TokenSegment):
        latent = seg.latent
        if latent.ndim != 5:
            raise PyramidflowError(f"segment latent must be (B, C, F, H, W), got shape {tuple(latent.shape)}")
        p, embed, _ = self._patch_level(seg.patch_level)
        if any(n % q for n, q in zip(latent.shape[2:], p, strict=True)):
            raise PyramidflowError(f"latent size {tuple(latent.shape[2:])} is not divisible "
                                   f"by patch size {p}")
        grid = tuple(n // q for n, q in zip(latent.shape[2:], p, strict=True))
        n = math.prod(grid)
        x = embed(latent.to(embed.weight.dtype)).flatten(2).transpose(1, 2)
        b = latent.shape[0]
        t = torch.as_tensor(seg.timestep, device=latent.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim == 1:
            if t.shape[0] != b:
                raise PyramidflowError(f"timestep of shape {tuple(t.shape)} does not match batch {b}")
            t, reps = t[:, None], [n]
        elif t.ndim == 2 and tuple(t.shape) == (b, n):
            reps = [1] * n
        else:
            raise PyramidflowError(f"timestep must be a number, (B,) or (B, tokens)=({b}, {n}); "
                                   f"got {tuple(t.shape)}")
        cfg = self.config
        offset, scale = seg.placement([q // f for q, f in zip(p, cfg.patch_size, strict=True)])
        rope = grid_rotation(grid, offset, scale, cfg.attention_head_dim, cfg.rope_theta, latent.device)
        return x, rope, t, reps, grid + (seg.patch_level, n)

    def _patch_level(self, level: int | None) -> tuple[tuple[int, ...], nn.Module, nn.Module]:
        """(patch size, patch embedding, output projection) of a segment's ``patch_level``: this model has
        one (None); a patchification pyramid has one per level (:class:`pyramidflow.models.ppf.PPFDiT`)."""
        if level is not None:
            raise PyramidflowError(f"patch level {level} needs a model with patch levels (PPFDiT); "
                                   "PyramidDiT has one patch size: leave patch_level None")
        return tuple(self.config.patch_size), self.patch_embedding, self.proj_out

    def _tokens(self, samples: Sequence[Sequence[TokenSegment]]) -> _Tokens:
        xs, pos, ts, reps, units, sids, grids = [], [], [], [], [], [], []
        for sid, segments in enumerate(samples):
            if not segments:
                raise PyramidflowError("a sample needs at least one segment")
            for seg in segments:
                x, p, t, r, grid = self._segment_tokens(seg)
                xs.append(x), pos.append(p), ts.append(t), reps.extend(r), grids.append(grid)
                units.append(torch.full((grid[-1],), int(seg.unit), dtype=torch.long, device=x.device))
                sids.append(torch.full((grid[-1],), sid, dtype=torch.long, device=x.device))
        batches = {x.shape[0] for x in xs}
        if len(batches) != 1:
            raise PyramidflowError(f"all segments must have the same batch size, got {sorted(batches)}")
        x = torch.cat(xs, dim=1).contiguous()
        rope = (pos[0] if len(pos) == 1 else torch.cat(pos))[None]
        return _Tokens(x, rope, torch.cat(ts, dim=1), reps, torch.cat(units), torch.cat(sids),
                       grids)

    def _output(self, x: Tensor, temb: Tensor, repeats: list[int] | None, grids, split: bool) -> list[Tensor]:
        mod = Modulation(temb.unsqueeze(2), repeats)
        shift, scale = mod.vectors(self.scale_shift_table)
        x = mod.apply(self.norm_out.modulate, [x], [scale, shift])
        sizes, levels = [g[-1] for g in grids], [g[3] for g in grids]
        if len(set(levels)) == 1:  # one projection over the sequence (gathered under sequence parallelism)
            parts = self._patch_level(levels[0])[2](x)[:, :sum(sizes)].split(sizes, dim=1)
        else:  # packed samples at several patch levels
            parts = [self._patch_level(lv)[2](part) for part, lv in
                     zip(x[:, :sum(sizes)].split(sizes, dim=1), levels, strict=True)]
        outs = []  # parts: (B, n, C * pt * ph * pw) per segment, without padding
        for part, (f, h, w, level, _) in zip(parts, grids, strict=True):
            pt, ph, pw = self._patch_level(level)[0]
            part = part.reshape(x.shape[0], f, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
            outs.append(part.reshape(x.shape[0], -1, f * pt, h * ph, w * pw))
        return outs if split else [torch.cat([o.flatten(2) for o in outs], 2)]

    # ------------------------------------------------------------------ core
    def _run(self, tok: _Tokens, text: Tensor | None, text_samples: Tensor | None, cache: HistoryCache | None,
             keep_kv: bool, text_cache: TextCache | None = None
             ) -> tuple[Tensor, Tensor, list[int] | None, list]:
        """Blocks over the tokens. Returns x, temb, the repeats used and (if keep_kv) per-layer k/v.

        text: (B, L, text_dim) encoder hidden states; it may be None when ``text_cache`` holds their
        cross-attention keys and values (then the text embedding and the text projections are skipped).
        Under sequence parallelism (:mod:`pyramidflow.models.parallel`) x, temb and the repeats are
        this process's shard of the tokens, and the k/v its heads of every real token.
        """
        repeats = tok.repeats
        m, s = tok.timesteps.shape[1], tok.x.shape[1]
        if m == 1 or m == s:
            repeats = None
        if text_cache is not None:
            text_cache.check(tok.x.shape[0], len(self.blocks), text)
            text_shape, text_dtype = text_cache.text_shape, text_cache.dtype
        elif text is None:
            raise PyramidflowError("give encoder_hidden_states or a text_cache")
        else:
            text_shape, text_dtype = tuple(text.shape), text.dtype
        temb, mod_table = self.condition_embedder.time(tok.timesteps, text_dtype)
        if cache is not None:
            cache.check(tok.x.shape[0], text_shape, tok.units)
        text = None if text_cache is not None else self.condition_embedder.text(text)
        x, rope, units, samples, exchange, pad = tok.x, tok.rope, tok.units, tok.samples, None, 0
        cp = ulysses_config(self)
        if cp is not None:  # sequence parallelism: this process keeps a shard of the (padded) tokens
            if text_samples is not None:
                raise PyramidflowError("sequence parallelism serves forward, forward_tokens and "
                                       "build_history_cache, not packed samples")
            entries = token_entries(m, s, tok.repeats, x.device)
            x, rope, units, samples, entries, pad = pad_tokens(cp.ulysses_degree, x, rope, units, samples,
                                                               entries)
            x, rope, entries = self.token_split(x, rope, entries)
            (temb, mod_table), repeats = local_tables(entries, temb, mod_table)
            exchange = UlyssesExchange(cp, s)
        mod = Modulation(mod_table, repeats)

        k_units, k_samples = units, samples
        if cache is not None:
            k_units = torch.cat((cache.units.to(units.device), units))
            k_samples = torch.cat((torch.zeros_like(cache.units, device=units.device), samples))
        single = cache is None and len(tok.grids) == 1 and not pad  # one segment: everyone sees everyone
        self_layout = None if single else AttentionLayout(samples, units, k_samples, k_units)
        cross_layout = None
        if text_samples is not None:
            cross_layout = AttentionLayout(tok.samples, tok.units, text_samples,
                                           torch.full_like(text_samples, TEXT_UNIT))
        backend = self.config.attention_backend
        kvs = []
        for i, block in enumerate(self.blocks):
            past = None if cache is None else (cache.keys[i], cache.values[i])
            text_kv = None if text_cache is None else (text_cache.keys[i], text_cache.values[i])
            args = (x, text, mod, rope, self_layout, cross_layout, past, backend, text_kv, exchange)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, kv = self._gradient_checkpointing_func(block, *args)
            else:
                x, kv = block(*args)
            if keep_kv:
                kvs.append(kv)
        return x, temb, repeats, kvs

    # ------------------------------------------------------------------ public API
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
    ) -> Transformer2DModelOutput | tuple[Tensor]:
        """Exactly ``WanTransformer3DModel.forward`` (text-to-video).

        hidden_states: (B, C, F, H, W); timestep: (B,) or per token (B, F*H*W / patch volume);
        encoder_hidden_states: (B, L, text_dim), or None with ``text_cache``
        (:meth:`build_text_cache`; same result, without recomputing the text's keys and values).
        Returns the velocity (B, out_channels, F, H, W).
        """
        if encoder_hidden_states_image is not None:
            raise PyramidflowError("PyramidDiT has no image embedding: "
                                   "encoder_hidden_states_image must be None")
        out = self.forward_tokens([TokenSegment(hidden_states, timestep)], encoder_hidden_states,
                                  text_cache=text_cache)[0]
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def forward_tokens(self, segments: Sequence[TokenSegment], encoder_hidden_states: Tensor | None,
                       cache: HistoryCache | None = None, text_cache: TextCache | None = None
                       ) -> list[Tensor]:
        """Run a sequence made of ``segments``; returns one (B, out_channels, F, H, W) output per segment.

        Attention is block-causal over the segments' units. With ``cache``, the cached history
        tokens come first in every self-attention (their units must precede every segment's).
        With ``text_cache`` (:meth:`build_text_cache`) the text's keys and values are not recomputed;
        ``encoder_hidden_states`` may then be None.
        """
        tok = self._tokens([segments])
        x, temb, repeats, _ = self._run(tok, encoder_hidden_states, None, cache, keep_kv=False,
                                        text_cache=text_cache)
        return self._output(x, temb, repeats, tok.grids, split=True)

    @torch.no_grad()
    def build_history_cache(self, segments: Sequence[TokenSegment], encoder_hidden_states: Tensor | None,
                            text_cache: TextCache | None = None) -> HistoryCache:
        """Keys/values of the history ``segments`` in every layer (docs/maths.md section 7), computed once.

        Use it for every denoising step of the unit that follows; rebuild it when the history
        changes (a new stage or a new unit). ``text_cache`` as in :meth:`forward_tokens`.
        """
        tok = self._tokens([segments])
        _, _, _, kvs = self._run(tok, encoder_hidden_states, None, None, keep_kv=True, text_cache=text_cache)
        text_shape = text_cache.text_shape if text_cache is not None else tuple(encoder_hidden_states.shape)
        return HistoryCache([k for k, _ in kvs], [v for _, v in kvs], tok.units, text_shape)

    def build_text_cache(self, encoder_hidden_states: Tensor) -> TextCache:
        """Cross-attention keys/values of the text (B, L, text_dim) in every layer, computed once.

        Exactly what every forward pass computes from the same text (docs/maths.md section 13): the
        text MLP, then each block's ``attn2.to_k`` + ``norm_k`` and ``attn2.to_v``. Pass it as
        ``text_cache=`` to :meth:`forward`, :meth:`forward_tokens` and :meth:`build_history_cache`
        for every step with these prompts (in the same batch order). Runs in the caller's grad mode.
        It reads the blocks' weights outside their forward, so not on an FSDP-sharded model (sample
        from a gathered copy, as training's validation does).
        """
        text = self.condition_embedder.text(encoder_hidden_states)
        kvs = [block.attn2.key_value(text, None) for block in self.blocks]
        return TextCache([k for k, _ in kvs], [v for _, v in kvs], tuple(encoder_hidden_states.shape),
                         encoder_hidden_states.dtype)

    def forward_packed(self, samples: Sequence[Sequence[TokenSegment]],
                       texts: Sequence[Tensor]) -> list[list[Tensor]]:
        """Several samples with different token counts in one sequence (mixed-stage training).

        samples[i]: segments of sample i, each with batch 1; texts[i]: (1, L_i, text_dim). Each
        sample attends only to itself (and its own text); the result equals running the samples
        one by one. Returns per sample the list of per-segment outputs.
        """
        if len(samples) != len(texts):
            raise PyramidflowError(f"{len(samples)} samples but {len(texts)} texts")
        for i, segs in enumerate(samples):
            if any(s.latent.shape[0] != 1 for s in segs) or texts[i].shape[0] != 1:
                raise PyramidflowError(f"packed sample {i} must have batch size 1 "
                                       "in every segment and its text")
        tok = self._tokens(samples)
        text = torch.cat(list(texts), dim=1)
        text_samples = torch.cat([torch.full((t.shape[1],), i, dtype=torch.long, device=text.device)
                                  for i, t in enumerate(texts)])
        x, temb, repeats, _ = self._run(tok, text, text_samples, None, keep_kv=False)
        outs = self._output(x, temb, repeats, tok.grids, split=True)
        counts = [len(s) for s in samples]
        return [outs[sum(counts[:i]):sum(counts[:i + 1])] for i in range(len(samples))]
