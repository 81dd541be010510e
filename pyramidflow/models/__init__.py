"""Models: the pyramid transformer (Wan-compatible), text encoders, and the video VAE (``models.vae``)."""

from pyramidflow.models.segments import HistoryCache, TokenSegment
from pyramidflow.models.transformer import PyramidDiT, PyramidDiTBlock

__all__ = ["HistoryCache", "PyramidDiT", "PyramidDiTBlock", "TokenSegment"]
