"""A word-level tokenizer built from a dataset's captions (the embedded text encoder's vocabulary)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from pyramidflow.errors import PyramidflowError

PAD, UNK, NULL = "<pad>", "<unk>", "<null>"
SPECIALS = (PAD, UNK, NULL)
_WORD = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Words -> ids. Id 0 is padding, 1 unknown words, 2 the empty prompt ``<null>``."""

    def __init__(self, vocab: Sequence[str]) -> None:
        if tuple(vocab[:3]) != SPECIALS:
            raise PyramidflowError(f"a vocabulary must start with {SPECIALS}, got {tuple(vocab[:3])}")
        if len(set(vocab)) != len(vocab):
            raise PyramidflowError("the vocabulary has repeated words")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, captions: Iterable[str], max_vocab: int = 10000, min_count: int = 1) -> WordTokenizer:
        """Most frequent words first (ties alphabetical), at most ``max_vocab`` entries in all."""
        if max_vocab <= len(SPECIALS):
            raise PyramidflowError(f"max_vocab must exceed {len(SPECIALS)}, got {max_vocab}")
        counts = Counter(w for c in captions for w in split_words(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *words[: max_vocab - len(SPECIALS)]])

    def __len__(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        """Token ids of one prompt; an empty prompt is ``[<null>]``."""
        words = split_words(text)
        if not words:
            return [self.index[NULL]]
        unk = self.index[UNK]
        return [self.index.get(w, unk) for w in words]

    def split(self, text: str) -> tuple[list[str], list[str]]:
        """The words of ``text`` in the vocabulary and those that are not (each once, in order)."""
        known, unknown = [], []
        for word in split_words(text):
            side = known if word in self.index else unknown
            if word not in side:
                side.append(word)
        return known, unknown

    def __call__(self, prompts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        """(B, max_length) ids padded with 0 (cut at max_length) and the (B, max_length) bool mask."""
        ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            row = self.ids(prompt)[:max_length]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != 0

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"vocab": self.vocab}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer vocabulary at {path}")
        return cls(json.loads(path.read_text())["vocab"])
