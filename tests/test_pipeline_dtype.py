"""bfloat16 sampling: the transformer runs in bf16, float32-only parameters and the sampling state stay
float32, and the output stays close to float32's."""

import torch

from pyramidflow.demo import DEFAULT_CHECKPOINT, demo_prompts
from pyramidflow.models import PyramidDiT
from pyramidflow.pipelines import PyramidFlowPipeline
from pyramidflow.pipelines.loading import move_module

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=64, num_layers=2)


def test_bf16_cast_keeps_float32_parameters_and_stays_close():
    """One forward pass in bf16 against float32. bf16 keeps 8 significant bits (unit roundoff 2^-9, 0.2%);
    the path through 2 blocks rounds about 20 times, independent errors add in quadrature to ~1% of the
    output's scale, so 3% of the largest output is a bound with margin that a wrong cast (e.g. bf16
    modulation tables or a bf16 timestep embedding) or a wrong dtype flow would exceed or break."""
    torch.manual_seed(0)
    ref_model = PyramidDiT(**TINY).eval()
    low_model = PyramidDiT(**TINY).eval()
    low_model.load_state_dict(ref_model.state_dict())
    move_module(low_model, "cpu", torch.bfloat16)
    dtypes = {n: p.dtype for n, p in low_model.named_parameters()}
    assert dtypes["scale_shift_table"] == dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    assert dtypes["blocks.0.attn1.to_q.weight"] == dtypes["patch_embedding.weight"] == torch.bfloat16
    gen = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 4, 2, 8, 8, generator=gen), torch.randn(2, 5, 16, generator=gen)
    t = torch.tensor([700.0, 30.0])
    with torch.no_grad():
        ref = ref_model(x, t, text).sample
        low = low_model(x, t, text.bfloat16()).sample
        cached = low_model(x, t, None, text_cache=low_model.build_text_cache(text.bfloat16())).sample
    assert low.dtype == torch.bfloat16 and torch.equal(cached, low)
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.03, err


def test_shipped_model_in_bf16_draws_the_same_videos():
    """The shipped model sampled in bf16 (2 prompts, guidance, 4 autoregressive units, 30 steps each):
    float32 state and output, and the same videos up to small pixel differences. Measured: mean
    |difference| 0.0015 of the pixel range on 8 demo prompts; a single pixel can differ by more where
    an edge moves by one pixel, so the test bounds the mean (0.01, i.e. 2.5 of 255 levels) and the
    share of pixels off by more than 0.1 (2%)."""
    prompts = demo_prompts()[:2]
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = PyramidFlowPipeline.from_pretrained(DEFAULT_CHECKPOINT, torch_dtype=dtype)
        assert pipe.dtype == dtype
        out[dtype] = pipe(prompts, seed=0, output_type="pt", progress=False)
    ref, low = out[torch.float32], out[torch.bfloat16]
    assert low.latents.dtype == torch.float32 and low.frames.dtype == torch.float32
    diff = (low.frames - ref.frames).abs()
    assert float(diff.mean()) < 0.01 and float((diff > 0.1).float().mean()) < 0.02, (diff.mean(), diff.max())
