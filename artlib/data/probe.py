"""The usability rule: is a video file good for training, evaluation or prediction, and if not, why?

One function, :func:`probe_video`, decides for ``artlib.data.check``, the data set
(``VideoDataset``), evaluation and prediction, so that they never disagree about a file:

A file is **usable** when it decodes the frames the sampling needs: at least one frame, decoded
cleanly to the end of the file (TSN sampling repeats frames in order when there are fewer than T).
Its kind is then

- ``"ok"``: it decodes the frames its header declares, and at least ``num_frames_needed``;
- ``"overstated"``: the header declares more frames than decode, and the decoder ends cleanly
  (a note: the frames that decode are used; ``declared`` and ``decoded`` say by how much);
- ``"short"``: fewer than ``num_frames_needed`` frames decode (a note: the sampling repeats frames).

It is **not usable** when it is

- ``"missing"``: no such file (or a folder);
- ``"empty"``: 0 bytes;
- ``"no_video"``: it opens but has no video stream (an audio-only file);
- ``"truncated"``: the file is cut short: an mp4 without its index (no ``moov`` box), a container
  whose index points past the end of the file, or a WebM/MKV holding under 80% of the frames its
  duration implies (an unfinished download);
- ``"corrupt"``: anything else that does not open or fails to decode, or a stream without frames.
"""

from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["PROBLEM_KINDS", "USABLE_KINDS", "VideoProbe", "probe_video"]

USABLE_KINDS = ("ok", "overstated", "short")
PROBLEM_KINDS = ("missing", "empty", "no_video", "truncated", "corrupt")
MODES = ("metadata", "last", "full")


class VideoProbe(NamedTuple):
    """What :func:`probe_video` found. ``kind`` is one of USABLE_KINDS or PROBLEM_KINDS;
    ``declared`` the container's frame count (-1 unknown), ``decoded`` the frames that decode (-1
    unknown; with mode "metadata" it is the declared count, unverified); ``reason`` a sentence for
    the logs and reports (empty for "ok")."""

    path: str
    kind: str
    declared: int
    decoded: int
    reason: str

    @property
    def usable(self) -> bool:
        return self.kind in USABLE_KINDS


def probe_video(
    path: str | os.PathLike, num_frames_needed: int = 1, mode: str = "last"
) -> VideoProbe:
    """Apply the usability rule (module docstring) to one file; never raises for a bad file.

    num_frames_needed: T, the frames one clip samples (below it the kind is "short").
    mode: ``"metadata"`` (trust the container's frame count), ``"last"`` (also decode the last
    frame it declares, which seeks to the last keyframe; the default) or ``"full"`` (decode every
    frame: also finds corruption in the middle of a file; slow).
    """
    from .decode import VideoDecodeError, decode_frames, video_info

    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if num_frames_needed < 1:
        raise ValueError(f"num_frames_needed: expected >= 1, got {num_frames_needed}")
    path = os.fspath(path)
    declared = -1
    try:
        declared = video_info(path).num_frames
        decoded = declared
        if mode == "full":
            decoded = video_info(path, exact=True).num_frames
        elif mode == "last":
            try:
                decode_frames(path, [declared - 1], threads=1)
            except VideoDecodeError as err:
                if err.kind != "past_end":
                    raise
                decoded = err.num_decoded or 0
    except VideoDecodeError as err:
        got = -1 if err.num_decoded is None else err.num_decoded
        kind = err.kind if err.kind in PROBLEM_KINDS else "corrupt"
        return VideoProbe(path, kind, declared, got, err.reason)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        return VideoProbe(path, "corrupt", declared, -1, f"{type(err).__name__}: {err}")
    if decoded <= 0:
        return VideoProbe(path, "corrupt", declared, 0, "no frame decodes")
    over = ""
    if decoded < declared:
        over = f"the header declares {declared} frames, {decoded} decode"
    if decoded < num_frames_needed:
        reason = f"{decoded} < {num_frames_needed} frames: the sampling repeats frames"
        return VideoProbe(path, "short", declared, decoded, "; ".join(filter(None, [reason, over])))
    if over:
        return VideoProbe(path, "overstated", declared, decoded, over)
    return VideoProbe(path, "ok", declared, decoded, "")
