"""A small UMT5 text encoder and its tokenizer, made from a list of captions (no download).

For toy Wan pipelines: the tokenizer is transformers' ``T5Tokenizer`` (a ``tokenizers`` Unigram
model, Metaspace pre-tokenizer, special tokens ``<pad>``, ``</s>``, ``<unk>``) over a vocabulary of
the captions' words plus every character as a fallback; the encoder is a randomly initialised
``UMT5EncoderModel`` of the given size (frozen in training, its fixed random features of the tokens
are what the transformer learns to read). Saved the way a ``WanPipeline`` folder holds them:
``text_encoder/`` and ``tokenizer/`` side by side.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def caption_tokenizer(captions: Iterable[str], vocab_size: int = 256):
    """A T5Tokenizer whose Unigram vocabulary holds the captions' words and every character.

    The pieces are the ``vocab_size`` most frequent words (``▁word``, scored by log frequency) and,
    for anything else, every character seen (``c`` and ``▁c``, scored far lower), so each known word
    is one token and an unknown one falls back to characters. (Trained with the ``tokenizers``
    Unigram trainer, a caption corpus of a few dozen words shrinks to single characters.)
    """
    from transformers import T5Tokenizer

    words, chars = Counter(), Counter()
    for caption in captions:
        for word in re.findall(r"\w+|[^\w\s]", caption):
            words[word] += 1
            chars.update(word)
    if not words:
        raise ValueError("caption_tokenizer needs at least one non-empty caption")
    total = sum(words.values())
    vocab = [(piece, 0.0) for piece in SPECIAL_TOKENS] + [("▁", math.log(1 / total))]
    vocab += [(f"▁{w}", math.log(n / total)) for w, n in words.most_common(vocab_size)]
    floor = math.log(1 / total) - 10.0
    for c in sorted(chars):
        vocab += [(c, floor), (f"▁{c}", floor)]
    seen, unique = set(), []
    for piece, score in vocab:
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    return T5Tokenizer(vocab=unique, extra_ids=0)


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
