"""Models: the pyramid transformer (Wan-compatible) and its patchification variant (``PPFDiT``), text
encoders, and the video VAE (``models.vae``)."""

from pyramidflow.models.ppf import PPFDiT, load_transformer
from pyramidflow.models.segments import HistoryCache, TextCache, TokenSegment
from pyramidflow.models.text_encoders import EmbeddedTextEncoder, PretrainedTextEncoder, load_text_encoder
from pyramidflow.models.transformer import PyramidDiT, PyramidDiTBlock
from pyramidflow.models.velocity import LazyTextCache, UnitVelocity, call_model, timestep_of

__all__ = [
    "EmbeddedTextEncoder",
    "HistoryCache",
    "LazyTextCache",
    "PPFDiT",
    "PretrainedTextEncoder",
    "PyramidDiT",
    "PyramidDiTBlock",
    "TextCache",
    "TokenSegment",
    "UnitVelocity",
    "call_model",
    "load_text_encoder",
    "load_transformer",
    "timestep_of",
]
