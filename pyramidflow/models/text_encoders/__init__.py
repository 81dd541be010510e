"""Text conditioning: one interface, ``encode(prompts) -> (embeddings (B, L, D), mask (B, L))``.

* :class:`EmbeddedTextEncoder`: small, trained with the model, word-level vocabulary from captions.
* :class:`PretrainedTextEncoder`: a frozen ``transformers`` encoder (T5/UMT5/CLIP) from a local
  directory, with an optional on-disk embedding cache.
* Classifier-free dropout: :func:`drop_prompts`, :func:`drop_embeddings`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyramidflow.models.text_encoders.base import (
    TextEncoderMixin,
    drop_embeddings,
    drop_prompts,
    pad_embeddings,
)
from pyramidflow.models.text_encoders.embedded import EmbeddedTextEncoder
from pyramidflow.models.text_encoders.pretrained import EmbeddingCache, PretrainedTextEncoder
from pyramidflow.models.text_encoders.word_tokenizer import WordTokenizer


def load_text_encoder(path: str | Path, **kwargs) -> TextEncoderMixin:
    """The encoder saved in ``path``: an :class:`EmbeddedTextEncoder` or a ``transformers`` one.

    ``kwargs`` go to :class:`PretrainedTextEncoder` (``max_length``, ``cache_dir``, ``dtype``).
    """
    config = Path(path) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"no text encoder at {path}: config.json is missing")
    if json.loads(config.read_text()).get("_class_name") == EmbeddedTextEncoder.__name__:
        return EmbeddedTextEncoder.from_pretrained(path)
    return PretrainedTextEncoder(path, **kwargs)


__all__ = [
    "EmbeddedTextEncoder",
    "EmbeddingCache",
    "PretrainedTextEncoder",
    "TextEncoderMixin",
    "WordTokenizer",
    "drop_embeddings",
    "drop_prompts",
    "load_text_encoder",
    "pad_embeddings",
]
