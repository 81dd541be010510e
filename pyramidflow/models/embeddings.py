"""Time, text and feed-forward layers with the parameter names of diffusers' Wan transformer.

Time conditioning (Wan): a sinusoidal embedding of timestep = 1000 * sigma (docs/maths.md section 1),
an MLP to the width, and a projection to the six modulation vectors of every block. Timesteps
may be per token, so tokens of different segments (history, current stage) carry their own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyramidflow.models.linear import Linear


def sinusoidal_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(N,) timesteps -> (N, dim) float32 embedding [cos, sin] (diffusers' flip_sin_to_cos, shift 0)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat((torch.cos(angles), torch.sin(angles)), dim=-1)
    return F.pad(emb, (0, dim % 2))


class FP32LayerNorm(nn.LayerNorm):
    """Layer norm computed in float32 whatever the input dtype, cast back."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)

    def modulate(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """``norm(x) * (1 + scale) + shift`` in float32, cast to x's dtype (Wan's adaptive norm).

        scale, shift: float32, broadcastable to x (B, S, dim). With one vector for the whole input
        (batch 1, one timestep) the modulation is the layer norm's own affine: one fused kernel;
        otherwise one fused multiply-add after the norm.
        """
        if self.weight is None and scale.numel() == shift.numel() == x.shape[-1]:
            out = F.layer_norm(x.float(), self.normalized_shape, (1 + scale).reshape(-1), shift.reshape(-1),
                               self.eps)
        else:
            out = torch.addcmul(shift, self(x.float()).float(), 1 + scale)
        return out.to(x.dtype)


class _MLP(nn.Module):
    """linear_1 -> activation -> linear_2 (diffusers' TimestepEmbedding / PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int, activation: nn.Module) -> None:
        super().__init__()
        self.linear_1 = Linear(in_dim, dim)
        self.act = activation
        self.linear_2 = Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TimeTextEmbedding(nn.Module):
    """Wan's ``condition_embedder``: timestep -> (temb, six modulation vectors); text -> width."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = _MLP(freq_dim, dim, nn.SiLU())
        self.act_fn = nn.SiLU()
        self.time_proj = Linear(dim, 6 * dim)
        self.text_embedder = _MLP(text_dim, dim, nn.GELU(approximate="tanh"))

    def time(self, timestep: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """timestep (B, M) -> temb (B, M, dim) in ``dtype`` and modulation (B, M, 6, dim)."""
        freq = sinusoidal_embedding(timestep.flatten(), self.freq_dim).unflatten(0, timestep.shape)
        freq = freq.to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(freq).to(dtype)
        return temb, self.time_proj(self.act_fn(temb)).unflatten(-1, (6, -1))

    def text(self, encoder_hidden_states: Tensor) -> Tensor:
        """(B, L, text_dim) -> (B, L, dim)."""
        return self.text_embedder(encoder_hidden_states)


_GELU_C = 2 * math.sqrt(2 / math.pi)


def gelu_tanh_(x: Tensor) -> Tensor:
    """tanh-approximate GELU of x, in place: ``x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))``.

    The same function as ``F.gelu(x, approximate="tanh")`` (0.5 (1 + tanh z) = sigmoid(2 z)), about
    twice as fast on the CPU, where PyTorch's vectorised tanh is the bottleneck; agrees to ~1e-6.
    """
    z = x * x
    z.mul_(0.044715 * _GELU_C).add_(_GELU_C).mul_(x)
    return x.mul_(z.sigmoid_())


class _GELUProjection(nn.Module):
    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.proj = Linear(dim, inner_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)
        inference = not (torch.is_grad_enabled() and h.requires_grad)
        if inference and h.device.type == "cpu" and h.dtype == torch.float32:
            return gelu_tanh_(h)  # inference on the CPU: the projection's fresh output, rewritten in place
        return F.gelu(h, approximate="tanh")


class FeedForward(nn.Module):
    """``net.0.proj`` (linear + tanh GELU), ``net.1`` (dropout), ``net.2`` (linear), as diffusers."""

    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        layers = [_GELUProjection(dim, inner_dim), nn.Dropout(0.0), Linear(inner_dim, dim)]
        self.net = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x
