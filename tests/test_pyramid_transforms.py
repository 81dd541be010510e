"""HaarTransform: exact identities in float64, PyWavelets agreement, white-noise facts
(docs/maths.md section 2)."""

import math

import numpy as np
import pytest
import pywt
import torch
from stats import assert_white

from pyramidflow.errors import PyramidflowError
from pyramidflow.pyramid import HaarTransform

KINDS = {
    "spatial": (HaarTransform(), (2, 3, 3, 16, 8)),
    "spatiotemporal": (HaarTransform(temporal=True), (2, 3, 8, 16, 8)),
    "causal": (HaarTransform(temporal=True, causal_first_frame=True), (2, 3, 9, 16, 8)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_down_up_roundtrip_exact(kind, levels):
    t, shape = KINDS[kind]
    y = torch.randn(t.shape_at(shape, levels), dtype=torch.float64)
    up = t.up(y, levels)
    assert tuple(up.shape) == shape
    assert torch.equal(t.down(up, levels), y)


@pytest.mark.parametrize("kind", KINDS)
def test_down_is_block_mean(kind):
    t, shape = KINDS[kind]
    x = torch.randn(shape, dtype=torch.float64)
    d = t.down(x)
    b, c, tt, h, w = shape
    if kind == "spatial":
        ref = x.reshape(b, c, tt, h // 2, 2, w // 2, 2).mean((4, 6))
    elif kind == "spatiotemporal":
        ref = x.reshape(b, c, tt // 2, 2, h // 2, 2, w // 2, 2).mean((3, 5, 7))
    else:
        first = x[:, :, :1].reshape(b, c, 1, h // 2, 2, w // 2, 2).mean((4, 6))
        rest = x[:, :, 1:].reshape(b, c, (tt - 1) // 2, 2, h // 2, 2, w // 2, 2).mean((3, 5, 7))
        ref = torch.cat([first, rest], 2)
    torch.testing.assert_close(d, ref, rtol=0, atol=1e-14)


def test_gain_is_sqrt_of_children_per_block():
    assert HaarTransform().gain == 2.0 and HaarTransform().group_gains == (2.0,)
    assert HaarTransform(temporal=True).gain == pytest.approx(2 * math.sqrt(2))


def test_causal_first_frame_frame_counts():
    t = HaarTransform(temporal=True, causal_first_frame=True)
    assert t.shape_at((1, 16, 21, 56, 104), 1) == (1, 16, 11, 28, 52)
    assert t.shape_at((1, 16, 21, 56, 104), 2) == (1, 16, 6, 14, 26)
    x = torch.randn(1, 2, 21, 8, 8, dtype=torch.float64)
    assert t.down(x, 2).shape[2] == 6
    # An image (one frame) is a valid causal video at any level.
    img = torch.randn(1, 2, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(t.down(t.up(img, 2), 2), img)
    assert t.gain == pytest.approx(2 * math.sqrt(2))
    assert t.group_gains == (2.0, pytest.approx(2 * math.sqrt(2)))


@pytest.mark.parametrize("kind", KINDS)
def test_analysis_is_orthonormal(kind):
    t, shape = KINDS[kind]
    x = torch.randn(shape, dtype=torch.float64)
    coeffs = t.analysis(x)
    total = sum(float((c**2).sum()) for c in coeffs)
    assert total == pytest.approx(float((x**2).sum()), rel=1e-12)
    torch.testing.assert_close(t.synthesis(coeffs), x, rtol=0, atol=1e-12)
    # The low band is gain * block mean, group by group.
    lows = [c[:, :, 0] for c in coeffs]
    for gain, low, mean in zip(t.group_gains, lows, t.split_groups(t.down(x)), strict=True):
        torch.testing.assert_close(low, gain * mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_analysis_maps_white_noise_to_white_noise(kind, generator):
    t, _ = KINDS[kind]
    shape = (4000, 1, 3 if kind == "causal" else 2, 2, 2)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    coeffs = torch.cat([c.reshape(shape[0], -1) for c in t.analysis(x)], 1)
    assert coeffs.shape[1] == x[0].numel()
    assert_white(coeffs)
    # c * down(eps) alone: white with unit variance.
    for gain, mean in zip(t.group_gains, t.split_groups(t.down(x)), strict=True):
        assert_white(gain * mean.reshape(shape[0], -1))


def test_spatial_haar_matches_pywavelets():
    t = HaarTransform()
    x = torch.randn(2, 3, 2, 8, 12, dtype=torch.float64)
    (coeff,) = t.analysis(x)
    ref = pywt.dwtn(x.numpy(), "haar", axes=(-2, -1))
    for band in range(4):
        key = "".join("d" if bit else "a" for bit in ((band >> 1) & 1, band & 1))
        ours, theirs = coeff[:, :, band].numpy(), ref[key]
        if band == 0:
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
            np.testing.assert_allclose(ours, 2.0 * t.down(x).numpy(), rtol=0, atol=1e-12)
        else:  # wavelet sign conventions differ per band; magnitude and structure must agree
            sign = np.sign(np.sum(ours * theirs))
            np.testing.assert_allclose(ours, sign * theirs, rtol=0, atol=1e-12)


def test_spatiotemporal_haar_matches_pywavelets():
    t = HaarTransform(temporal=True)
    x = torch.randn(2, 2, 4, 8, 6, dtype=torch.float64)
    (coeff,) = t.analysis(x)
    ref = pywt.dwtn(x.numpy(), "haar", axes=(-3, -2, -1))
    for band in range(8):
        bits = ((band >> 2) & 1, (band >> 1) & 1, band & 1)
        key = "".join("d" if bit else "a" for bit in bits)
        ours, theirs = coeff[:, :, band].numpy(), ref[key]
        sign = 1.0 if band == 0 else np.sign(np.sum(ours * theirs))
        np.testing.assert_allclose(ours, sign * theirs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ref["aaa"], 2 * math.sqrt(2) * t.down(x).numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_detail_noise_is_the_detail_projection(kind, generator):
    t, _ = KINDS[kind]
    shape = (6000, 1, 3 if kind == "causal" else 2, 2, 2)
    d = t.detail_noise(shape, generator=generator, dtype=torch.float64)
    assert t.down(d).abs().max() < 1e-14  # zero block mean, exactly
    # Covariance = I - up(down(.)): per block 1 - 1/m on the diagonal, -1/m off it.
    # Whitening by the projector's pseudo-inverse square root is not possible (it is singular),
    # so check: d + up(gain * down(eps')) / gain is white for independent eps'.
    eps2 = torch.randn(shape, generator=generator, dtype=torch.float64)
    assert_white((d + t.up(t.down(eps2))).reshape(shape[0], -1))
    # and the projector's diagonal: Var(d) = 1 - 1/m per element.
    var = d.reshape(shape[0], -1).var(0)
    expect = torch.cat(
        [torch.full((g.shape[2] * 4,), 1 - 1 / (4 * tf)) for g, tf in
         zip(t.split_groups(d[:1]), [grp.temporal_factor for grp in t.groups], strict=True)]
    )
    se = math.sqrt(2 / shape[0])
    assert ((var - expect).abs() / (se * expect)).max() < 6


def test_bad_shapes_name_valid_values():
    with pytest.raises(PyramidflowError, match="multiple of 4"):
        HaarTransform().down(torch.zeros(1, 1, 1, 6, 8), 2)
    with pytest.raises(PyramidflowError, match=r"1 \+ k\*2"):
        HaarTransform(temporal=True, causal_first_frame=True).down(torch.zeros(1, 1, 4, 8, 8))
    with pytest.raises(PyramidflowError, match="multiple of 2"):
        HaarTransform(temporal=True).down(torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(PyramidflowError, match="temporal=True"):
        HaarTransform(causal_first_frame=True)
    with pytest.raises(PyramidflowError, match=r"\(B, C, T, H, W\)"):
        HaarTransform().down(torch.zeros(4, 8, 8))


@pytest.mark.parametrize("kind", KINDS)
def test_lift_without_noise_is_up_and_its_noise_is_detail(kind, generator):
    t, shape = KINDS[kind]
    y = torch.randn(t.shape_at(shape, 1), dtype=torch.float64)
    scales = [(0.7, 0.0)] * len(t.groups)
    torch.testing.assert_close(t.lift(y, scales, generator), 0.7 * t.up(y), rtol=0, atol=1e-14)
    noise = t.lift(torch.zeros_like(y), [(1.0, 1.0)] * len(t.groups), generator)
    assert t.down(noise).abs().max() < 1e-14 and noise.std() > 0.5
