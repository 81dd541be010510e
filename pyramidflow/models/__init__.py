"""Models: the pyramid transformer (Wan-compatible), text encoders, and the video VAE (``models.vae``)."""

from pyramidflow.models.segments import HistoryCache, TokenSegment
from pyramidflow.models.text_encoders import EmbeddedTextEncoder, PretrainedTextEncoder, load_text_encoder
from pyramidflow.models.transformer import PyramidDiT, PyramidDiTBlock
from pyramidflow.models.unit_velocity import UnitVelocity

__all__ = [
    "EmbeddedTextEncoder",
    "HistoryCache",
    "PretrainedTextEncoder",
    "PyramidDiT",
    "PyramidDiTBlock",
    "TokenSegment",
    "UnitVelocity",
    "load_text_encoder",
]
