"""The CPU video decoder (PyAV): exact frames by index, decoded sequentially, seeking only where it pays.

Index ``i`` means the i-th frame the decoder outputs in display order (0-based), whatever the
timestamps say, so variable-frame-rate files are indexed by frame, not by time. Decoding runs forward
from the start and stops after the last wanted index; it seeks (to a keyframe) only when a keyframe
lies at least ``seek_gap`` frames ahead of the decoder and no later than the next wanted frame, which
is the only case where seeking saves work. Long-GOP files (one keyframe every 250 frames) therefore
never seek, and the common seek-per-frame loader decodes each GOP again for every frame it wants.

PyAV (``av``) is imported lazily: ``import artlib.data`` works without it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["VideoDecodeError", "VideoInfo", "decode_frames", "video_info"]

# Seeking costs a decoder flush plus the frames from the keyframe to the target; decoding one
# 480p H.264 frame costs ~1-2 ms on this 2-core CPU. Below ~32 skipped frames seeking does not pay.
DEFAULT_SEEK_GAP = 32


class VideoDecodeError(RuntimeError):
    """A video that cannot be read: missing, empty, corrupt, without a video stream, or with fewer
    frames than asked for. ``path`` names the file, ``reason`` says why, ``num_decoded`` is the number
    of frames the decoder produced when the file ended early (None otherwise)."""

    def __init__(self, path: str, reason: str, num_decoded: int | None = None):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.num_decoded = num_decoded

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason, self.num_decoded))


class VideoInfo(NamedTuple):
    """What ``video_info`` reports. ``num_frames`` is the container's count (or the packet count
    when the container has none; the decoded count with ``exact=True``); ``fps`` the average rate;
    ``codec`` the FFmpeg codec name (``"h264"``, ``"vp9"``, ...)."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration: float
    exact: bool


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency of the video extra
        raise ImportError("artlib.data needs PyAV to decode: pip install 'artlib[video]'") from e
    return av


def _open(path: str | os.PathLike):
    """av.open with every failure turned into VideoDecodeError naming the file."""
    av = _av()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise VideoDecodeError(path, f"cannot open ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoDecodeError(path, f"no video stream (streams: {', '.join(kinds)})")
    return container


def _count_packets(container, stream) -> int:
    n = 0
    for packet in container.demux(stream):
        if packet.size > 0:
            n += 1
    return n


def video_info(path: str | os.PathLike, exact: bool = False) -> VideoInfo:
    """Frame count, frame rate, size and codec of the first video stream of ``path``.

    Raises VideoDecodeError (with the path and the reason) on a missing, empty or unreadable file and
    on a file without a video stream. ``exact=True`` decodes every frame to count them (slow; also
    proves the file decodes to its end), otherwise the container's count is trusted.
    """
    av = _av()
    path = os.fspath(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        cc = stream.codec_context
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        try:
            if exact:
                stream.thread_type = "AUTO"
                n = sum(1 for _ in container.decode(stream))
            else:
                n = int(stream.frames or 0) or _count_packets(container, stream)
        except av.FFmpegError as e:
            raise VideoDecodeError(path, f"corrupt stream ({type(e).__name__}: {e})") from None
        if n <= 0:
            raise VideoDecodeError(path, "video stream has no frames", num_decoded=0)
        return VideoInfo(path, n, fps, cc.width, cc.height, cc.name, duration, exact)
    finally:
        container.close()


def _index_table(container, stream):
    """Display-order presentation timestamps and keyframe display indices, by demuxing only."""
    pts, key_pts = [], set()
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
        if packet.is_keyframe:
            key_pts.add(packet.pts)
    pts.sort()
    if len(set(pts)) != len(pts):
        return None
    keys = [i for i, p in enumerate(pts) if p in key_pts]
    return pts, keys


def decode_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    seek_gap: int | None = DEFAULT_SEEK_GAP,
    threads: int = 0,
) -> torch.Tensor:
    """Decode the frames ``indices`` of ``path`` -> uint8 tensor (len(indices), H, W, 3), RGB.

    Index i is the i-th decoded frame in display order; indices may repeat and come in any order
    (each distinct frame is decoded once). Equivalent to ``torch.stack([all_frames[i] for i in
    indices])`` where ``all_frames`` is every frame of the file decoded in order, but decodes only up
    to the last wanted index and seeks forward to a keyframe when that skips at least ``seek_gap``
    frames (``seek_gap=None``: never seek). ``threads``: FFmpeg decoder threads (0: FFmpeg decides).

    Raises VideoDecodeError on unreadable files and when an index is past the last frame (its
    ``num_decoded`` then holds the number of frames the file really has).
    """
    path = os.fspath(path)
    if isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not idx:
        raise ValueError("indices: expected at least one frame index, got none")
    if min(idx) < 0:
        raise ValueError(f"indices: expected indices >= 0, got {min(idx)}")
    wanted = sorted(set(idx))
    frames = _run(path, lambda c, s: _decode(c, s, wanted, seek_gap), threads)
    if frames is _RESTART:  # the seek table did not match the decoder: count frames plainly
        frames = _run(path, lambda c, s: _decode_plain(c, s, wanted), threads)
    if isinstance(frames, int):
        raise VideoDecodeError(
            path, f"frame {wanted[-1]} asked for, the video has {frames} frames", num_decoded=frames
        )
    shapes = {f.shape for f in frames.values()}
    if len(shapes) != 1:
        raise VideoDecodeError(path, f"frame size changes inside the video: {sorted(shapes)}")
    return torch.from_numpy(np.stack([frames[i] for i in idx]))


_RESTART = object()


def _run(path: str, fn, threads: int):
    av = _av()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        return fn(container, stream)
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"corrupt stream ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def _decode(container, stream, wanted: list[int], seek_gap: int | None):
    """{index: HxWx3 uint8 array}; the number of frames seen if the video ends early; or _RESTART."""
    # Build the pts table only if some gap between wanted frames could hold a keyframe worth a seek.
    gaps = np.diff([-1, *wanted])
    if seek_gap is None or gaps.max() <= seek_gap:
        return _decode_plain(container, stream, wanted)
    table = _index_table(container, stream)
    if table is None or len(table[1]) < 2:  # no usable timestamps, or nothing to seek to
        return _RESTART
    pts, keys = table
    pts_index = {p: i for i, p in enumerate(pts)}
    container.seek(pts[0], stream=stream, backward=True, any_frame=False)
    frames_iter = container.decode(stream)
    out: dict[int, np.ndarray] = {}
    pos = -1  # display index of the last decoded frame
    k = 0  # position in wanted
    last_seek = 0  # never seek twice to the same keyframe (a seek may land before it)
    while k < len(wanted):
        target = wanted[k]
        if pos >= 0:  # (frame 0 is always decoded first: it checks the table against the decoder)
            j = bisect.bisect_right(keys, target) - 1
            if j >= 0 and keys[j] > last_seek and keys[j] - (pos + 1) >= seek_gap:
                container.seek(pts[keys[j]], stream=stream, backward=True, any_frame=False)
                frames_iter = container.decode(stream)
                last_seek = keys[j]
        frame = next(frames_iter, None)
        if frame is None:
            return _RESTART  # ended early: let the plain pass count the frames
        i = pts_index.get(frame.pts)
        if i is None or i > target or (pos < 0 and i != 0):
            return _RESTART  # edit list, missing pts, or a seek that landed past the target
        pos = i
        if i == target:
            out[i] = frame.to_ndarray(format="rgb24")
            k += 1
    return out


def _decode_plain(container, stream, wanted: list[int]):
    """Count decoded frames from the start: {index: array}, or the frame count if it ends early."""
    out: dict[int, np.ndarray] = {}
    pos, k = -1, 0
    for frame in container.decode(stream):
        pos += 1
        if pos == wanted[k]:
            out[pos] = frame.to_ndarray(format="rgb24")
            k += 1
            if k == len(wanted):
                return out
    return pos + 1
