"""Resolution transforms between pyramid levels (docs/maths.md section 2).

One level halves H and W (spatial, m = 4 children per parent) or T, H and W (spatiotemporal,
m = 8). ``down`` is the block mean, ``up`` the nearest-neighbour copy, and ``detail_noise`` white
noise projected onto the zero-block-mean (detail) subspace. The orthonormal Haar analysis is
available as ``analysis``/``synthesis``; its low band is ``gain * down(x)`` with gain c = sqrt(m).

Causal first frame (Wan's VAE, docs/maths.md section 2): the first latent frame has no temporal partner,
so it is transformed spatially (c = 2) and the remaining frames spatiotemporally (c = 2*sqrt(2)):
21 -> 11 -> 6 frames. The two token groups keep different gains; ``renoise`` reconciles them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError

Shape5 = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class TokenGroup:
    """A run of frames transformed with one block size: frames [start, stop) at the fine level."""

    temporal_factor: int  # 1 (spatial block 1x2x2) or 2 (spatiotemporal block 2x2x2)
    first_frame_only: bool  # True for the causal first frame group

    @property
    def children(self) -> int:
        return 4 * self.temporal_factor

    @property
    def gain(self) -> float:
        return math.sqrt(self.children)


def _check_shape5(shape, levels: int) -> tuple[int, ...]:
    """``shape`` as ints; one-line errors unless it is (B, C, T, H, W) and ``levels`` >= 0."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise PyramidflowError(f"expected a (B, C, T, H, W) shape, got {len(shape)} dims: {shape}")
    if levels < 0:
        raise PyramidflowError(f"levels must be >= 0, got {levels}")
    return shape


def _haar_matrix(temporal_factor: int, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    """Orthonormal Haar basis for one block, rows = basis vectors, row 0 = constant (low band).

    Children inside a block are flattened in (dt, dh, dw) order. (m, m) with m = 4 or 8.
    """
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2.0)
    mat = torch.kron(h2, h2)
    if temporal_factor == 2:
        mat = torch.kron(h2, mat)
    return mat.to(dtype=dtype, device=device)


class HaarTransform:
    """Spatial or spatiotemporal Haar pyramid on (B, C, T, H, W) tensors.

    Args:
        temporal: halve T as well as H and W at every level (2x2x2 blocks).
        causal_first_frame: with ``temporal``, keep frame 0 apart and halve it spatially only,
            so T must be 1 + k * 2**levels.
    """

    def __init__(self, temporal: bool = False, causal_first_frame: bool = False):
        if causal_first_frame and not temporal:
            raise PyramidflowError("causal_first_frame=True needs temporal=True (it only changes time)")
        self.temporal = bool(temporal)
        self.causal_first_frame = bool(causal_first_frame)
        tf = 2 if self.temporal else 1
        if self.causal_first_frame:
            self.groups: tuple[TokenGroup, ...] = (TokenGroup(1, True), TokenGroup(2, False))
        else:
            self.groups = (TokenGroup(tf, False),)
        # c = sqrt(children per parent); with mixed groups the largest one (see renoise).
        self.gain: float = max(g.gain for g in self.groups)
        self.group_gains: tuple[float, ...] = tuple(g.gain for g in self.groups)

    def __repr__(self) -> str:
        return f"HaarTransform(temporal={self.temporal}, causal_first_frame={self.causal_first_frame})"

    # ------------------------------------------------------------------ shapes
    def check_shape(self, shape, levels: int = 1) -> None:
        """Raise a clear error unless a (B, C, T, H, W) ``shape`` can be lowered ``levels`` times."""
        shape = _check_shape5(shape, levels)
        _, _, t, h, w = shape
        f = 2**levels
        for name, size in (("height", h), ("width", w)):
            if size < f or size % f:
                raise PyramidflowError(
                    f"{name} {size} cannot be halved {levels} times: it must be a multiple of {f} "
                    f"(valid: {f}, {2 * f}, {3 * f}, ...)"
                )
        if self.causal_first_frame:
            if t < 1 or (t - 1) % f:
                raise PyramidflowError(
                    f"frames {t} do not fit a causal-first-frame pyramid of {levels} levels: "
                    f"need 1 + k*{f} frames (valid: 1, {1 + f}, {1 + 2 * f}, ...)"
                )
        elif self.temporal and (t < f or t % f):
            raise PyramidflowError(
                f"frames {t} cannot be halved {levels} times: need a multiple of {f} "
                f"(valid: {f}, {2 * f}, {3 * f}, ...)"
            )

    def shape_at(self, shape, levels: int) -> Shape5:
        """The shape of a (B, C, T, H, W) tensor after ``levels`` applications of ``down``."""
        self.check_shape(shape, levels)
        b, c, t, h, w = (int(s) for s in shape)
        f = 2**levels
        if self.causal_first_frame:
            t = 1 + (t - 1) // f
        elif self.temporal:
            t = t // f
        return (b, c, t, h // f, w // f)

    # ----------------------------------------------------------- group split
    def _split_fine(self, x: Tensor) -> list[Tensor]:
        """Frame runs of the token groups; the first frame stays first at every level."""
        if self.causal_first_frame:
            return [x[:, :, :1], x[:, :, 1:]]
        return [x]

    @staticmethod
    def _merge(parts: list[Tensor]) -> Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    # ------------------------------------------------------- block operators
    @staticmethod
    def _blocks(x: Tensor, tf: int) -> Tensor:
        """(B, C, T, H, W) -> (B, C, T/tf, H/2, W/2, m) with children in (dt, dh, dw) order."""
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // tf, tf, h // 2, 2, w // 2, 2)
        x = x.permute(0, 1, 2, 4, 6, 3, 5, 7)
        return x.reshape(b, c, t // tf, h // 2, w // 2, tf * 4)

    @staticmethod
    def _unblocks(x: Tensor, tf: int) -> Tensor:
        """Inverse of ``_blocks``: (B, C, T', H', W', m) -> (B, C, T'*tf, 2H', 2W')."""
        b, c, t, h, w, _ = x.shape
        x = x.reshape(b, c, t, h, w, tf, 2, 2).permute(0, 1, 2, 5, 3, 6, 4, 7)
        return x.reshape(b, c, t * tf, h * 2, w * 2)

    @staticmethod
    def _empty_up(part: Tensor) -> Tensor:
        """The (empty) upsampled run of a group with no frames, e.g. the rest of a 1-frame video."""
        b, c, _, h, w = part.shape
        return part.new_empty(b, c, 0, 2 * h, 2 * w)

    def _down_once(self, x: Tensor) -> Tensor:
        parts = []
        for group, part in zip(self.groups, self._split_fine(x), strict=True):
            if part.shape[2] == 0:
                parts.append(part[:, :, :0, ::2, ::2])
                continue
            parts.append(self._blocks(part, group.temporal_factor).mean(dim=-1))
        return self._merge(parts)

    def _up_once(self, y: Tensor) -> Tensor:
        parts = []
        for group, part in zip(self.groups, self._split_fine(y), strict=True):
            tf = group.temporal_factor
            if part.shape[2] == 0:
                parts.append(self._empty_up(part))
                continue
            rep = part.unsqueeze(-1).expand(*part.shape, tf * 4)
            parts.append(self._unblocks(rep, tf))
        return self._merge(parts)

    def _check_tensor(self, x: Tensor, levels: int, name: str) -> None:
        if not isinstance(x, Tensor):
            raise PyramidflowError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        self.check_shape(x.shape, levels)

    # --------------------------------------------------------------- public
    def down(self, x: Tensor, levels: int = 1) -> Tensor:
        """Block mean over (T,) H, W, applied ``levels`` times. (B,C,T,H,W) -> (B,C,T',H/2^L,W/2^L)."""
        self._check_tensor(x, levels, "x")
        for _ in range(levels):
            x = self._down_once(x)
        return x

    def up(self, y: Tensor, levels: int = 1) -> Tensor:
        """Nearest-neighbour copy into each block (Haar inverse with zero detail); down(up(y)) == y."""
        if not isinstance(y, Tensor) or y.dim() != 5:
            raise PyramidflowError("up expects a (B, C, T, H, W) tensor")
        if levels < 0:
            raise PyramidflowError(f"levels must be >= 0, got {levels}")
        if self.causal_first_frame and y.shape[2] < 1:
            raise PyramidflowError("a causal-first-frame tensor needs at least one frame")
        for _ in range(levels):
            y = self._up_once(y)
        return y

    def project_detail(self, x: Tensor) -> Tensor:
        """P_detail(x) = x - up(down(x)): the zero-block-mean part of ``x`` (one level)."""
        return x - self.up(self.down(x))

    def detail_noise(self, shape, generator=None, device=None, dtype=None) -> Tensor:
        """White noise at ``shape`` projected onto the detail subspace (zero block mean, one level).

        Its covariance is the projector I - up(down(.)), so adding it to an independent,
        nearest-upsampled white field of the parent level gives white noise (docs/maths.md section 5).
        """
        self.check_shape(shape, 1)
        if device is None and generator is not None:
            device = generator.device
        eps = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return self.project_detail(eps)

    def analysis(self, x: Tensor) -> list[Tensor]:
        """Orthonormal one-level Haar analysis, one coefficient tensor per token group.

        Each is (B, C, m, T', H', W'); band 0 is the low band ``gain * down(x)``, bands 1..m-1 the
        details, in the Kronecker order of the 1-D pair (low, high) over (t,) h, w.
        """
        self._check_tensor(x, 1, "x")
        out = []
        for group, part in zip(self.groups, self._split_fine(x), strict=True):
            mat = _haar_matrix(group.temporal_factor, x.dtype, x.device)
            coeff = self._blocks(part, group.temporal_factor) @ mat.T  # (B, C, T', H', W', m)
            out.append(coeff.permute(0, 1, 5, 2, 3, 4))
        return out

    def synthesis(self, coeffs: list[Tensor]) -> Tensor:
        """Inverse of ``analysis`` (the basis is orthonormal, so the inverse is the transpose)."""
        if len(coeffs) != len(self.groups):
            raise PyramidflowError(f"expected {len(self.groups)} coefficient tensors, got {len(coeffs)}")
        parts = []
        for group, coeff in zip(self.groups, coeffs, strict=True):
            mat = _haar_matrix(group.temporal_factor, coeff.dtype, coeff.device)
            blocks = coeff.permute(0, 1, 3, 4, 5, 2) @ mat  # (B, C, T', H', W', m)
            parts.append(self._unblocks(blocks, group.temporal_factor))
        return self._merge(parts)

    def lift(self, y: Tensor, scales: list[tuple[float, float]], generator=None) -> Tensor:
        """Per group g: a_g up(y_g) + s_g P_detail(eps), fused in one pass (docs/maths.md section 5).

        ``scales`` holds (a_g, s_g) per token group. The noise is drawn directly in block layout
        (B, C, T', H', W', m) and its block mean removed, which is P_detail of white noise.
        """
        if len(scales) != len(self.groups):
            raise PyramidflowError(f"expected {len(self.groups)} (scale, noise) pairs, got {len(scales)}")
        parts = []
        for group, part, (a, s) in zip(self.groups, self._split_fine(y), scales, strict=True):
            m, tf = group.children, group.temporal_factor
            if part.shape[2] == 0:
                parts.append(self._empty_up(part))
                continue
            eps = torch.randn((*part.shape, m), generator=generator, device=part.device, dtype=part.dtype)
            eps = eps - eps.mean(dim=-1, keepdim=True)
            parts.append(self._unblocks(torch.addcmul(a * part.unsqueeze(-1), eps, eps.new_tensor(s)), tf))
        return self._merge(parts)

    def split_groups(self, x: Tensor) -> list[Tensor]:
        """The per-group frame runs of ``x`` (at any level), in order; see ``merge_groups``."""
        return self._split_fine(x)

    def merge_groups(self, parts: list[Tensor]) -> Tensor:
        return self._merge(parts)


class IdentityTransform:
    """The levels of a patchification pyramid (docs/maths.md section 9): every level is the full resolution.

    Stages differ by the model's patch size, not by the latent's, so ``down`` and ``up`` are the
    identity, there is no detail subspace and the gain is c = 1. Used wherever a
    :class:`HaarTransform` is: with it :func:`pyramidflow.pyramid.training_sample` is the plain
    flow-matching path ``(1 - sigma) x0 + sigma eps`` with target ``eps - x0`` (sigma in the drawn
    stage's window), the sampler starts from full-resolution noise, and the jump (5.1) with c = 1 is
    the identity (alpha = 1, sigma' = sigma), as :func:`pyramidflow.pyramid.identity_transition`.
    """

    temporal = False
    causal_first_frame = False
    gain = 1.0
    group_gains = (1.0,)

    def __repr__(self) -> str:
        return "IdentityTransform()"

    def check_shape(self, shape, levels: int = 1) -> None:
        """Raise a clear error unless ``shape`` is (B, C, T, H, W) (every size keeps at every level)."""
        shape = _check_shape5(shape, levels)

    def shape_at(self, shape, levels: int) -> Shape5:
        self.check_shape(shape, levels)
        return tuple(int(s) for s in shape)

    def down(self, x: Tensor, levels: int = 1) -> Tensor:
        if not isinstance(x, Tensor):
            raise PyramidflowError(f"x must be a torch.Tensor, got {type(x).__name__}")
        self.check_shape(x.shape, levels)
        return x

    def up(self, y: Tensor, levels: int = 1) -> Tensor:
        return self.down(y, levels)

    def project_detail(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def lift(self, y: Tensor, scales: list[tuple[float, float]], generator=None) -> Tensor:
        """a * y: the jump's up(y) with no detail to fill."""
        if len(scales) != 1:
            raise PyramidflowError(f"expected 1 (scale, noise) pair, got {len(scales)}")
        return scales[0][0] * y

    def split_groups(self, x: Tensor) -> list[Tensor]:
        return [x]

    def merge_groups(self, parts: list[Tensor]) -> Tensor:
        return parts[0]
