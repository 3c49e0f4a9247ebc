"""artlib.data: annotation readers, TSN sampling, the PyAV decoder, the DALI pipeline, the
Dataset/DataLoader path, the usability rule (``probe_video``) and a synthetic fine-grained video set. PyAV and DALI are imported lazily."""

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
from .dali import DaliVideoLoader, dali_decode_frames, make_dali_loader
from .dataset import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SampleFailure,
    ShardedSampler,
    TooManyFailures,
    VideoDataset,
    VideoLoader,
    collate_skip_failures,
    make_loader,
)
from .decode import (
    VideoDecodeError,
    VideoInfo,
    decode_frames,
    frame_times,
    monotonic_times,
    video_info,
)
from .probe import PROBLEM_KINDS, USABLE_KINDS, VideoProbe, probe_video
from .sampling import crop_params, item_rng, sample_indices, three_crops
from .synthetic import CLASS_NAMES, SyntheticSet, make_finegrained_set

__all__ = [
    "CLASS_NAMES",
    "PROBLEM_KINDS",
    "USABLE_KINDS",
    "VideoProbe",
    "frame_times",
    "monotonic_times",
    "probe_video",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DaliVideoLoader",
    "SampleFailure",
    "ShardedSampler",
    "SyntheticSet",
    "TooManyFailures",
    "VideoDataset",
    "VideoDecodeError",
    "VideoInfo",
    "VideoItem",
    "VideoLoader",
    "collate_skip_failures",
    "crop_params",
    "dali_decode_frames",
    "decode_frames",
    "item_rng",
    "make_dali_loader",
    "make_finegrained_set",
    "make_loader",
    "read_annotations",
    "read_diving48",
    "read_finegym",
    "read_generic_list",
    "read_kinetics",
    "read_ntu",
    "read_ssv2",
    "sample_indices",
    "three_crops",
    "video_info",
    "write_generic_list",
]
