"""Files: write mp4 (H.264) / GIF / images, read any video back, contact sheets, folders of clips,
the training checkpoint format (:mod:`pyramidflow.io.checkpoint`), file checksums and durable writes
(:mod:`pyramidflow.io.checksums`) and who may write into a run folder (:mod:`pyramidflow.io.run_dir`).

Imports no model code.
"""

from pyramidflow.io.clips import write_clips
from pyramidflow.io.read import (
    MEDIA_SUFFIXES,
    VideoInfo,
    VideoReadError,
    iter_frames,
    probe,
    read_frames,
    read_video,
)
from pyramidflow.io.sheet import contact_sheet
from pyramidflow.io.write import to_uint8_frames, write_video

__all__ = [
    "MEDIA_SUFFIXES",
    "VideoInfo",
    "VideoReadError",
    "contact_sheet",
    "iter_frames",
    "probe",
    "read_frames",
    "read_video",
    "to_uint8_frames",
    "write_clips",
    "write_video",
]
