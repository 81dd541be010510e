"""A small UMT5 text encoder and its tokenizer, made from a list of captions (no download).

For toy Wan pipelines: the tokenizer is a Unigram model trained on the captions with the
``tokenizers`` library (Metaspace pre-tokenizer, special tokens ``<pad>``, ``</s>``, ``<unk>``),
handed to transformers' ``T5Tokenizer`` as its vocabulary; the encoder is a randomly initialised
``UMT5EncoderModel`` of the given size (frozen in training, its fixed random features of the tokens
are what the transformer learns to read). Saved the way a ``WanPipeline`` folder holds them:
``text_encoder/`` and ``tokenizer/`` side by side.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def caption_tokenizer(captions: Iterable[str], vocab_size: int = 256):
    """A T5Tokenizer whose Unigram vocabulary is learnt from ``captions``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="<unk>")
    tok.train_from_iterator(list(captions), trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_umt5(tokenizer, d_model: int = 64, num_layers: int = 2, num_heads: int = 4, d_ff: int = 128,
              seed: int = 0):
    """A random ``UMT5EncoderModel`` for ``tokenizer``'s vocabulary, in eval mode (no dropout)."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
                        num_layers=num_layers, num_heads=num_heads)
    return UMT5EncoderModel(config).eval()


def save_tiny_umt5(captions: Iterable[str], path: str | Path, **kwargs) -> Path:
    """Make both from ``captions`` and save ``path/text_encoder`` and ``path/tokenizer``."""
    size = {k: kwargs.pop(k) for k in ("vocab_size",) if k in kwargs}
    tokenizer = caption_tokenizer(captions, **size)
    encoder = tiny_umt5(tokenizer, **kwargs)
    path = Path(path)
    encoder.save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "tokenizer")
    return path
