"""PPFDiT (docs/maths.md section 9): patch levels, their initialisation from a one-patch model, positions,
saving and errors."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from pyramidflow.errors import PyramidflowError
from pyramidflow.models import PPFDiT, PyramidDiT, TokenSegment, load_transformer
from pyramidflow.models.rope import grid_rotation

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2)
LEVELS = [[2, 4, 4], [1, 4, 2], [1, 2, 2]]  # ratios to the fine patch: (2, 2, 2), (1, 2, 1), (1, 1, 1)


def _pair(levels=LEVELS, dtype=torch.float64):
    torch.manual_seed(0)
    base = PyramidDiT(**TINY).to(dtype).eval()
    return base, PPFDiT.from_transformer(base, levels)


def _inputs(shape=(2, 4, 4, 8, 8), seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    t = torch.rand(shape[0], generator=g, dtype=dtype) * 1000
    return x, t, torch.randn(shape[0], 5, TINY["text_dim"], generator=g, dtype=dtype)


def _ratio(level):
    return [q // f for q, f in zip(LEVELS[level], TINY["patch_size"], strict=True)]


def test_coarse_embedding_is_the_fine_embedding_of_the_average_pooled_patch():
    _, ppf = _pair()
    x, _, _ = _inputs()
    for level in (0, 1):
        r = _ratio(level)
        coarse = ppf.ppf_embeddings[level](x)
        fine = ppf.patch_embedding(F.avg_pool3d(x, kernel_size=r))
        assert coarse.shape == fine.shape
        torch.testing.assert_close(coarse, fine, rtol=0, atol=1e-12)


def test_coarse_output_is_the_nearest_upsampled_fine_output_of_the_same_tokens():
    _, ppf = _pair()
    g = torch.Generator().manual_seed(2)
    dim = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    f, h, w = 2, 2, 3
    x = torch.randn(2, f * h * w, dim, generator=g, dtype=torch.float64)
    temb = torch.randn(2, 1, dim, generator=g, dtype=torch.float64)
    # the output head (modulated norm, projection, unpatchify) on the same tokens at each level
    fine = ppf._output(x, temb, None, [(f, h, w, None, f * h * w)], split=True)[0]  # (2, 4, 2, 4, 6)
    for level in (0, 1):
        coarse = ppf._output(x, temb, None, [(f, h, w, level, f * h * w)], split=True)[0]
        up = fine
        for axis, n in enumerate(_ratio(level)):
            up = up.repeat_interleave(n, dim=2 + axis)
        assert coarse.shape == up.shape
        torch.testing.assert_close(coarse, up, rtol=0, atol=1e-12)


def test_a_converted_coarse_level_is_the_model_on_the_pooled_latent_upsampled():
    """Both halves together: level i on x == up_r(base on avg_pool_r(x)), the pooled tokens placed at
    the centres of the fine tokens they cover."""
    base, ppf = _pair()
    x, t, text = _inputs()
    with torch.no_grad():
        for level in (0, 1):
            r = _ratio(level)
            out = ppf(x, t, text, patch_level=level).sample
            seg = TokenSegment(F.avg_pool3d(x, kernel_size=r), t, offset=[(n - 1) / 2 for n in r], scale=r)
            ref = base.forward_tokens([seg], text)[0]
            for axis, n in enumerate(r):
                ref = ref.repeat_interleave(n, dim=2 + axis)
            torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_coarse_tokens_sit_at_the_centres_of_the_fine_tokens_they_cover():
    seg = TokenSegment(torch.zeros(1), 0.0, offset=(1.0, 0.5, 2.0), scale=(1.0, 2.0, 2.0))
    assert seg.placement((1, 1, 1)) == ((1.0, 0.5, 2.0), (1.0, 2.0, 2.0))
    # a token covering 2 x 4 fine tokens: centre of fine tokens 0..1 (t) and 0..3 (h) of the segment's grid
    assert seg.placement((2, 4, 1)) == ((1.5, 3.5, 2.0), (2.0, 8.0, 2.0))
    _, ppf = _pair(dtype=torch.float32)
    x, t, _ = _inputs(dtype=torch.float32)
    for level, tokens in ((0, (2, 2, 2)), (1, (4, 2, 4))):  # (4, 8, 8) in patches (2, 4, 4), (1, 4, 2)
        _, rope, _, _, grid = ppf._segment_tokens(TokenSegment(x, t, patch_level=level))
        r = _ratio(level)
        assert grid == (*tokens, level, tokens[0] * tokens[1] * tokens[2])
        expect = grid_rotation(grid[:3], [(n - 1) / 2 for n in r], r, TINY["attention_head_dim"], 10000.0)
        assert torch.equal(rope, expect)
    _, rope, _, _, grid = ppf._segment_tokens(TokenSegment(x, t))  # the finest: Wan's integer grid
    assert grid[:3] == (4, 4, 4)
    assert torch.equal(rope, grid_rotation((4, 4, 4), (0, 0, 0), (1, 1, 1), TINY["attention_head_dim"]))


def test_the_finest_level_is_pyramiddit_and_wan(tmp_path):
    torch.manual_seed(0)
    wan = WanTransformer3DModel(**TINY, rope_max_seq_len=64).eval()
    wan.save_pretrained(tmp_path / "wan")
    ours = PyramidDiT.from_pretrained(tmp_path / "wan").eval()
    ppf = PPFDiT.from_transformer(wan, LEVELS[1:]).eval()  # straight from diffusers' class
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 8, 6, generator=g)
    text = torch.randn(2, 7, 16, generator=g)
    for t in (torch.rand(2, generator=g) * 1000, torch.rand(2, 3 * 4 * 3, generator=g) * 1000):
        with torch.no_grad():
            ref = wan(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
            mine = ours(x, t, text).sample
            for level in (None, 1):
                out = ppf(x, t, text, patch_level=level).sample
                assert torch.equal(out, mine)
                assert (out - ref).abs().max() < 1e-4


def test_per_token_timesteps_at_a_coarse_level():
    _, ppf = _pair(dtype=torch.float32)
    x, t, text = _inputs(dtype=torch.float32)
    tokens = 2 * 2 * 2  # (4, 8, 8) in 2 x 4 x 4 patches
    with torch.no_grad():
        same = ppf(x, t[:, None].expand(-1, tokens), text, patch_level=0).sample
        torch.testing.assert_close(same, ppf(x, t, text, patch_level=0).sample, rtol=1e-5, atol=1e-6)
    with pytest.raises(PyramidflowError, match=r"\(B, tokens\)=\(2, 8\)"):
        ppf(x, torch.zeros(2, 64), text, patch_level=0)


def test_packed_samples_at_different_levels_equal_separate_calls():
    _, ppf = _pair(dtype=torch.float32)
    x, t, text = _inputs(dtype=torch.float32)
    samples = [[TokenSegment(x[:1], t[:1], patch_level=0)],
               [TokenSegment(x[1:, :, :2], t[1:], patch_level=2)]]
    with torch.no_grad():
        packed = ppf.forward_packed(samples, [text[:1], text[1:]])
        for (seg,), text_i, (out,) in zip(samples, (text[:1], text[1:]), packed, strict=True):
            alone = ppf(seg.latent, seg.timestep, text_i, patch_level=seg.patch_level).sample
            torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)


def test_state_dict_keeps_the_base_names_and_adds_the_levels(tmp_path):
    base, ppf = _pair(dtype=torch.float32)
    names, extra = set(base.state_dict()), set(ppf.state_dict()) - set(base.state_dict())
    assert names <= set(ppf.state_dict())
    assert extra == {f"{m}.{i}.{p}" for m in ("ppf_embeddings", "ppf_proj_outs") for i in (0, 1)
                     for p in ("weight", "bias")}
    assert all(torch.equal(ppf.state_dict()[k], v) for k, v in base.state_dict().items())
    with torch.no_grad():  # an independent copy: a frozen teacher stays as it is
        ppf.proj_out.weight.add_(1.0)
    assert not torch.equal(ppf.proj_out.weight, base.proj_out.weight)


def test_save_and_load_round_trip(tmp_path):
    _, ppf = _pair(dtype=torch.float32)
    ppf.save_pretrained(tmp_path / "ppf")
    assert list((tmp_path / "ppf").glob("*.safetensors"))
    loaded = load_transformer(tmp_path / "ppf")
    assert type(loaded) is PPFDiT and loaded.patch_sizes == tuple(tuple(p) for p in LEVELS)
    assert loaded.config.ppf_patch_sizes == LEVELS
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ppf.state_dict().items())
    x, t, text = _inputs(dtype=torch.float32)
    with torch.no_grad():
        for level in (0, 1, 2):
            assert torch.equal(ppf(x, t, text, patch_level=level).sample,
                               loaded.eval()(x, t, text, patch_level=level).sample)
    PyramidDiT(**TINY).save_pretrained(tmp_path / "plain")
    assert type(load_transformer(tmp_path / "plain")) is PyramidDiT


@pytest.mark.parametrize("levels, message", [
    ([[1, 4, 4], [1, 4, 4]], "ppf_patch_sizes must end with the model's patch_size (1, 2, 2)"),
    ([[1, 4, 4]], "ppf_patch_sizes must end with the model's patch_size (1, 2, 2)"),
    ([[1, 3, 4], [1, 2, 2]], "patch (1, 3, 4) is not a multiple of the model's patch_size (1, 2, 2)"),
    ([[1, 2, 2], [1, 4, 4], [1, 2, 2]], "strictly smaller patches"),
    ([[1, 4], [1, 2, 2]], "three positive integers"),
    ([], "must end with the model's patch_size"),
])
def test_bad_patch_sizes_are_one_line_errors(levels, message):
    with pytest.raises(PyramidflowError) as err:
        PPFDiT(**TINY, ppf_patch_sizes=levels)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


def test_bad_calls_are_one_line_errors():
    base, ppf = _pair(dtype=torch.float32)
    x, t, text = _inputs(shape=(1, 4, 3, 8, 6), dtype=torch.float32)
    cases = [
        (lambda: ppf(x, t, text, patch_level=0), "latent size (3, 8, 6) is not divisible by patch size "
                                                 "(2, 4, 4)"),
        (lambda: ppf(x[:, :, :2], t, text, patch_level=0), "(2, 8, 6) is not divisible by patch size "
                                                           "(2, 4, 4)"),
        (lambda: ppf(x, t, text, patch_level=3), "patch level 3 is out of range: this model has levels 0..2"),
        (lambda: base.forward_tokens([TokenSegment(x, t, patch_level=0)], text),
         "patch level 0 needs a model with patch levels (PPFDiT)"),
        (lambda: PPFDiT.from_transformer(ppf, LEVELS), "already has patch levels"),
        (lambda: PPFDiT.from_transformer(base, [[1, 4, 4]]), "must end with the model's patch_size"),
    ]
    for call, message in cases:
        with pytest.raises(PyramidflowError) as err:
            call()
        assert message in str(err.value) and len(str(err.value).splitlines()) == 1, str(err.value)
