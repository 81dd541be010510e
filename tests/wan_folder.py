"""A tiny but genuine diffusers ``WanPipeline`` folder, built offline for the tests.

Every component is the real diffusers / transformers class at a toy size: ``WanTransformer3DModel``,
``AutoencoderKLWan``, ``UMT5EncoderModel`` with a Unigram tokenizer trained on the fly (wrapped as a
transformers ``T5Tokenizer``), ``FlowMatchEulerDiscreteScheduler``. The folder is written by
``WanPipeline.save_pretrained``, exactly the layout a user downloads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pyramidflow.models.text_encoders.tiny_umt5 import caption_tokenizer, tiny_umt5

CAPTIONS = [
    "a red circle moving right on a black background",
    "a blue square moving up against a white background",
    "a green triangle moving slowly left over a gray background",
    "a yellow circle moving quickly down and to the right on a white background",
    "a magenta square standing still against a black background",
]


def tiny_tokenizer(captions=CAPTIONS):
    """A Unigram tokenizer trained on ``captions``, as a transformers T5Tokenizer (no file needed)."""
    return caption_tokenizer(captions * 4, vocab_size=60)


def build_wan_pipeline(seed: int = 0, z_dim: int = 4, text_dim: int = 32, dtype=torch.float32):
    """A tiny random ``WanPipeline`` (T2V): 17 frames -> 5 latent frames, 8x spatial compression."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_umt5(tokenizer, d_model=text_dim, num_layers=2, num_heads=4, d_ff=64, seed=seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim,
                           latents_std=[1.0] * z_dim).eval()
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=z_dim, out_channels=z_dim, text_dim=text_dim, freq_dim=32,
                                        ffn_dim=48, num_layers=2, cross_attn_norm=True, eps=1e-6,
                                        rope_max_seq_len=64).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)
    return pipe.to(dtype) if dtype != torch.float32 else pipe


def save_wan_pipeline(path: Path, **kwargs) -> Path:
    """Build and save a tiny pipeline at ``path`` (``save_pretrained``'s layout); returns ``path``."""
    pipe = build_wan_pipeline(**kwargs)
    pipe.save_pretrained(path)
    return Path(path)
