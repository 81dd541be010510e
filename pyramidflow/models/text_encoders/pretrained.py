"""A frozen ``transformers`` text encoder (T5, UMT5, MT5, CLIP text) from a local directory.

Wan's contract: the encoder's last hidden state is cut to each prompt's true token length and
zero-padded to ``max_length`` (512 for Wan). Embeddings can be cached on disk, one safetensors file
per prompt keyed by a hash of (model id, max length, prompt); the model id includes a hash of the
encoder's config and weights index so two different encoders never share entries.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.text_encoders.base import TextEncoderMixin, pad_embeddings

ENCODER_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
    "clip": "CLIPTextModel",
    "clip_text_model": "CLIPTextModel",
}


class EmbeddingCache:
    """Prompt embeddings on disk: ``<dir>/<key[:2]>/<key>.safetensors`` with one (L, D) tensor."""

    def __init__(self, directory: str | Path, model_id: str, max_length: int) -> None:
        self.directory, self.model_id, self.max_length = Path(directory), model_id, max_length

    def key(self, prompt: str) -> str:
        text = f"{self.model_id}\0{self.max_length}\0{prompt}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path(self, prompt: str) -> Path:
        key = self.key(prompt)
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, prompt: str) -> Tensor | None:
        path = self.path(prompt)
        return load_file(path)["embedding"] if path.is_file() else None

    def put(self, prompt: str, embedding: Tensor) -> None:
        path = self.path(prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embedding": embedding.detach().float().cpu().contiguous()}, tmp)
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _model_id(path: Path) -> str:
    """The directory, its config and its weight files' sizes (hashing gigabytes of weights is too slow)."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return f"{path.resolve()}#{digest.hexdigest()[:16]}"


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json")


def tokenizer_folder(path: Path) -> Path:
    """Where the tokenizer of the encoder in ``path`` lives: ``path`` itself, or the sibling
    ``tokenizer/`` of a diffusers pipeline folder (``text_encoder/`` and ``tokenizer/`` side by side)."""
    for folder in (path, path.parent / "tokenizer"):
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    raise FileNotFoundError(f"no tokenizer for the text encoder in {path}: none of "
                            f"{', '.join(TOKENIZER_FILES)} in it or in {path.parent / 'tokenizer'}")


class PretrainedTextEncoder(nn.Module, TextEncoderMixin):
    """Frozen encoder + tokenizer loaded from ``path`` (no download)."""

    def __init__(self, path: str | Path, max_length: int | None = None, cache_dir: str | Path | None = None,
                 dtype: torch.dtype = torch.float32, tokenizer_path: str | Path | None = None) -> None:
        """``max_length`` None: Wan's 512, or the encoder's own limit if that is smaller (CLIP: 77).
        ``tokenizer_path`` None: ``path``, or the sibling ``tokenizer/`` (:func:`tokenizer_folder`)."""
        super().__init__()
        import transformers

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no text encoder at {path}: config.json is missing")
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        cls_name = ENCODER_CLASSES.get(config.model_type)
        if cls_name is None:
            raise PyramidflowError(f"text encoder type {config.model_type!r} is not supported: "
                                   f"valid types are {', '.join(sorted(ENCODER_CLASSES))}")
        limit = getattr(config, "max_position_embeddings", None)
        if max_length is None:
            max_length = 512 if limit is None else min(512, limit)
        if limit is not None and max_length > limit:
            raise PyramidflowError(f"max_length {max_length} exceeds the encoder's {limit} positions")
        self.model = getattr(transformers, cls_name).from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.requires_grad_(False).eval()
        tokenizer_path = tokenizer_folder(path) if tokenizer_path is None else Path(tokenizer_path)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        self.max_length = max_length
        self.model_id = _model_id(path)
        self.cache = None if cache_dir is None else EmbeddingCache(cache_dir, self.model_id, max_length)

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: never dropout
        return self

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> list[Tensor]:
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                               add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return [h[: int(n)] for h, n in zip(hidden, mask.sum(1), strict=True)]

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        prompts = [str(p) for p in prompts]
        rows: list[Tensor | None] = [None] * len(prompts)
        if self.cache is not None:
            rows = [self.cache.get(p) for p in prompts]
        missing = sorted({p for p, r in zip(prompts, rows, strict=True) if r is None})
        if missing:
            fresh = dict(zip(missing, self._run(missing), strict=True))
            if self.cache is not None:
                for p, e in fresh.items():
                    self.cache.put(p, e)
            rows = [fresh[p] if r is None else r for p, r in zip(prompts, rows, strict=True)]
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        rows = [r.to(device=device, dtype=dtype) for r in rows]
        return pad_embeddings(rows, self.max_length)
