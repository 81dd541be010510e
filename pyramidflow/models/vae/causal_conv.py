"""Causal 3D building blocks with a streaming feature cache.

Time is causal: an output frame depends only on input frames at or before it, so a video can be
processed chunk by chunk with a small cache of past frames and give exactly the same result as one
pass over the whole clip (MAGVIT-v2 style, as used by Pyramid Flow's causal video VAE, paper Sec. 4).
Tensors are (B, C, T, H, W).

Streaming: ``set_streaming(module, True)`` switches every block below ``module`` to keep its cache
between calls; ``reset_streams(module)`` forgets the past (start of a new clip).

Maths: docs/maths.md section 16.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from einops import rearrange
from torch import nn


class Streamable(nn.Module, ABC):
    """A block that can keep state between consecutive temporal chunks of one clip."""

    def __init__(self) -> None:
        super().__init__()
        self.streaming = False

    @abstractmethod
    def reset_stream(self) -> None:
        """Forget the previous chunk's state."""


def set_streaming(module: nn.Module, enabled: bool) -> None:
    """Turn chunk-by-chunk mode on or off for every streamable block; always starts a fresh clip."""
    for sub in module.modules():
        if isinstance(sub, Streamable):
            sub.streaming = enabled
            sub.reset_stream()


def reset_streams(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, Streamable):
            sub.reset_stream()


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value, value, value) if isinstance(value, int) else tuple(value)


class CausalConv3d(Streamable):
    """3D convolution, causal in time (first frame replicated as past padding), 'same' in space.

    With temporal stride s and kernel k, input frames 1 + s*m give 1 + m outputs and output j sees
    input frames s*j - (k - 1) .. s*j: frame 0 is encoded on its own.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple = 3, stride: int | tuple = 1) -> None:
        super().__init__()
        kt, kh, kw = _triple(kernel)
        self.kt, self.st = kt, _triple(stride)[0]
        self.conv = nn.Conv3d(
            in_ch, out_ch, (kt, kh, kw), stride=_triple(stride), padding=(0, kh // 2, kw // 2)
        )
        self.cache: torch.Tensor | None = None

    def reset_stream(self) -> None:
        self.cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if self.streaming and self.cache is not None:
            x = torch.cat([self.cache, x], dim=2)
        elif self.kt > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1), x], dim=2)
        n = x.shape[2]
        if n < self.kt:
            raise ValueError(
                f"causal conv got {n} frames (with cache) for a temporal kernel of {self.kt}; "
                "chunks must hold a whole number of temporal compression groups"
            )
        if self.streaming:
            used = ((n - self.kt) // self.st + 1) * self.st  # frames no later output needs again
            self.cache = x[:, :, used:]
        return self.conv(x)


class CausalGroupNorm(nn.GroupNorm):
    """GroupNorm over (C/g, H, W) of each frame separately, so it never mixes time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each pixel (as in Wan's VAE): purely local in space and time, so
    chunked and tiled decoding see exactly the same statistics as whole decoding."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        shape = (1, -1, 1, 1, 1)
        y = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def make_norm(channels: int, groups: int) -> nn.Module:
    """``groups > 0``: per-frame GroupNorm (the paper's choice); ``groups == 0``: channel RMS norm."""
    if groups == 0:
        return ChannelRMSNorm(channels)
    return CausalGroupNorm(_groups(channels, groups), channels, eps=1e-6)


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class CausalResBlock(nn.Module):
    """Norm-SiLU-conv twice with a residual connection (1x1x1 projection when widths differ)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = make_norm(in_ch, groups)
        self.conv1 = CausalConv3d(in_ch, out_ch, 3)
        self.norm2 = make_norm(out_ch, groups)
        self.conv2 = CausalConv3d(out_ch, out_ch, 3)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class CausalPlainBlock(nn.Module):
    """Causal conv then SiLU, no normalisation: a light block that trains fast on small CPU presets."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(in_ch, out_ch, 3)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def make_block(in_ch: int, out_ch: int, groups: int, kind: str) -> nn.Module:
    """``kind="res"``: normalised residual block (the paper's); ``"plain"``: conv + SiLU."""
    if kind == "plain":
        return CausalPlainBlock(in_ch, out_ch)
    return CausalResBlock(in_ch, out_ch, groups)


class CausalDownsample(Streamable):
    """Strided causal conv: x2 in time (1 + 2m -> 1 + m frames) and/or x2 in space.

    ``shortcut=True`` adds a parameter-free residual path (DC-AE, Chen et al. 2024, "space-to-channel
    shortcut"): the x2 blocks of the input are folded into channels and averaged back to C channels,
    i.e. a causal average pool, and the conv sees SiLU(x) (pre-activation), so the block learns a
    residual on top of a down-sampled copy of its input. Frame 0 is its own group (replicated once).
    """

    def __init__(self, channels: int, temporal: bool, spatial: bool, shortcut: bool = False) -> None:
        super().__init__()
        self.ft, self.fs = (2 if temporal else 1), (2 if spatial else 1)
        stride = (self.ft, self.fs, self.fs)
        self.conv = CausalConv3d(channels, channels, 3, stride=stride)
        self.shortcut = shortcut
        self.started = False

    def reset_stream(self) -> None:
        self.started = False

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, 1 + ft*m, H, W) -> (B, C, 1 + m, H/fs, W/fs); channel groups of one input channel
        if self.ft == 2 and not (self.streaming and self.started):
            x = torch.cat([x[:, :, :1], x], dim=2)  # frame 0 forms a group with itself
        folded = rearrange(
            x, "b c (t ft) (h fh) (w fw) -> b c (ft fh fw) t h w", ft=self.ft, fh=self.fs, fw=self.fs
        )
        return folded.mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shortcut:
            return self.conv(x)
        y = self.conv(nn.functional.silu(x)) + self._pooled(x)
        if self.streaming:
            self.started = True
        return y


class CausalUpsample(Streamable):
    """Conv to C*ft*fs*fs channels, then depth-to-space/time; 1 + m -> 1 + 2m frames in time.

    Latent frame 0 expands to two frames of which the first is dropped (the first frame stands on
    its own), so in streaming mode only the very first chunk of a clip drops a frame.
    ``shortcut=True`` (DC-AE "channel-to-space" shortcut) adds the input repeated over the x2 block,
    i.e. a nearest-neighbour up-sample, and the conv sees SiLU(x) (pre-activation).
    """

    def __init__(self, channels: int, temporal: bool, spatial: bool, shortcut: bool = False) -> None:
        super().__init__()
        self.ft, self.fs = (2 if temporal else 1), (2 if spatial else 1)
        self.conv = CausalConv3d(channels, channels * self.ft * self.fs * self.fs, 3)
        self.shortcut = shortcut
        self.started = False

    def reset_stream(self) -> None:
        self.started = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut:
            factor = self.ft * self.fs * self.fs
            h = self.conv(nn.functional.silu(x)) + x.repeat_interleave(factor, dim=1)
        else:
            h = self.conv(x)
        pattern = "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)"
        y = rearrange(h, pattern, ft=self.ft, fh=self.fs, fw=self.fs)
        if self.ft == 2 and not (self.streaming and self.started):
            y = y[:, :, 1:]
        if self.streaming:
            self.started = True
        return y
