"""artlib.data: annotation readers, TSN sampling, the PyAV decoder, the DALI pipeline, the
Dataset/DataLoader path and a synthetic fine-grained video set. PyAV and DALI are imported lazily."""

from .annotations import (
    VideoItem,
    read_annotations,
    read_diving48,
    read_finegym,
    read_generic_list,
    read_kinetics,
    read_ntu,
    read_ssv2,
    write_generic_list,
)
from .decode import VideoDecodeError, VideoInfo, decode_frames, video_info

__all__ = [
    "VideoDecodeError",
    "VideoInfo",
    "VideoItem",
    "decode_frames",
    "read_annotations",
    "read_diving48",
    "read_finegym",
    "read_generic_list",
    "read_kinetics",
    "read_ntu",
    "read_ssv2",
    "video_info",
    "write_generic_list",
]
