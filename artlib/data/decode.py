"""The CPU video decoder (PyAV): exact frames by index, sequential decoding, skipping only safe work.

Index ``i`` means the i-th frame the decoder outputs (its output order is the display order), 0-based,
whatever the timestamps say, so variable-frame-rate files are indexed by frame, not by time. Frame
``i``'s time is defined by :func:`monotonic_times` (see docs/data.md): the decoded frames'
timestamps, with missing ones filled, reordered ones put back in increasing order and repeated ones
nudged forward, so that time never decreases with the index. ``frame_times`` lists them.

Rotated videos (a display matrix, as phones write) come out upright: frames are turned as the matrix
says, and ``video_info`` reports the upright size.

How ``decode_frames`` works (and why it is exact):

1. Demux the packets (no decoding) until every wanted frame's display position is known: the display
   index of a packet is the rank of its timestamp among the stream's (non-discarded) packets, final
   once 32 later packets have all come past it (H.264/HEVC reorder at most 16 frames).
2. Feed the decoder forward from the start, and stop after the last wanted frame. Two kinds of packet
   are never fed: (a) those before a keyframe that lies at least ``seek_gap`` packets ahead of the
   decoder and no later than the next wanted frame (a "seek", done in memory: drain, flush, jump), and
   (b) for H.264/HEVC, non-reference frames (``nal_ref_idc == 0`` / sub-layer non-reference NAL types)
   that are not wanted: no other frame depends on them, so skipping them cannot change any other frame
   (this is what FFmpeg's own ``skip_frame=nonref`` does; it saves ~40% of the decoding on x264
   defaults).
3. Check as it goes that the decoder returns exactly the fed frames in increasing display order; on any
   surprise (missing timestamps, edit lists that drop frames, a decoder that reorders differently) it
   starts over with the plain path that counts every decoded frame, which is the definition.

Long-GOP files (one keyframe every 250 frames) therefore never seek, while the common seek-per-frame
loader decodes the GOP again for every frame it wants. PyAV is imported lazily.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import struct
import sys
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "VideoDecodeError",
    "VideoInfo",
    "decode_clip",
    "decode_frames",
    "frame_times",
    "monotonic_times",
    "stream_frames",
    "video_info",
]

# A seek here is in memory (the packets are already demuxed): it costs a decoder drain and flush,
# about the time of a few frames, so it pays once it skips more than a handful of packets.
DEFAULT_SEEK_GAP = 16
# Packets past a frame that must all have later timestamps before its display rank is final
# (H.264/HEVC reorder at most 16 frames).
_REORDER_MARGIN = 32


class VideoDecodeError(RuntimeError):
    """A video that cannot be read: missing, empty, corrupt, without a video stream, or with fewer
    frames than asked for. ``path`` names the file, ``reason`` says why, ``num_decoded`` is the number
    of frames the decoder produced when the file ended early (None otherwise). ``kind`` sorts the
    failure: "missing", "empty", "no_video", "truncated", "corrupt", or "past_end" (an index past
    the last frame of a file that decoded cleanly to its end; ``num_decoded`` frames)."""

    def __init__(
        self, path: str, reason: str, num_decoded: int | None = None, kind: str = "corrupt"
    ):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.num_decoded = num_decoded
        self.kind = kind

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason, self.num_decoded, self.kind))


class VideoInfo(NamedTuple):
    """What ``video_info`` reports. ``num_frames`` is the container's count (or the packet count
    when the container has none; the decoded count with ``exact=True``); ``fps`` the average rate;
    ``codec`` the FFmpeg codec name (``"h264"``, ``"vp9"``, ...); ``width`` and ``height`` the
    upright size of the decoded frames; ``rotation`` the clockwise turn (0, 90, 180 or 270 degrees)
    applied to the stored frames to make them upright."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration: float
    exact: bool
    rotation: int = 0


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency of artlib
        raise ImportError("artlib.data needs PyAV to decode: pip install av") from e
    return av


def _open(path: str | os.PathLike):
    """av.open with every failure turned into VideoDecodeError naming the file and its kind."""
    av = _av()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found", kind="missing")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a folder, not a video file", kind="missing")
    size = os.path.getsize(path)
    if size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)", num_decoded=0, kind="empty")
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        if _mp4_without_index(path):
            raise VideoDecodeError(
                path,
                "truncated: an mp4 without its index (no moov box): an unfinished download?",
                kind="truncated",
            ) from None
        raise VideoDecodeError(path, f"cannot open ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoDecodeError(
            path, f"no video stream (streams: {', '.join(kinds)})", kind="no_video"
        )
    entries = container.streams.video[0].index_entries
    if len(entries):  # the container's index points past the end of the file: cut short
        last = entries[len(entries) - 1]
        if last.pos + last.size > size:
            container.close()
            raise VideoDecodeError(
                path,
                f"truncated: the file has {size} bytes, its index refers to "
                f"{last.pos + last.size} (an unfinished download?)",
                kind="truncated",
            )
    return container


def _mp4_without_index(path: str) -> bool:
    """An ISO-BMFF file (``ftyp`` first) that holds media data but no ``moov`` box."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8)[4:8] != b"ftyp":
                return False
            fh.seek(0)
            size, pos, kinds = os.fstat(fh.fileno()).st_size, 0, set()
            while pos + 8 <= size:
                fh.seek(pos)
                n, kind = struct.unpack(">I4s", fh.read(8))
                if n == 1:
                    n = struct.unpack(">Q", fh.read(8))[0]
                elif n == 0:
                    n = size - pos
                if n < 8:
                    break
                kinds.add(kind)
                pos += n
            return b"moov" not in kinds and b"mdat" in kinds
    except (OSError, struct.error):
        return False


def _count_packets(container, stream) -> int:
    n = 0
    for packet in container.demux(stream):
        if packet.size > 0:
            n += 1
    return n


def video_info(path: str | os.PathLike, exact: bool = False) -> VideoInfo:
    """Frame count, frame rate, size and codec of the first video stream of ``path``.

    Raises VideoDecodeError (with the path and the reason) on a missing, empty or unreadable file, on
    a file without a video stream, and on a WebM/MKV file holding under 80% of the frames its header's
    duration implies (truncated). ``exact=True`` decodes every frame to count them (slow; also
    proves the file decodes to its end), otherwise the container's count is trusted.
    """
    path = os.fspath(path)
    container = _open(path)
    try:
        return _info(container, path, exact)[0]
    finally:
        container.close()


def _info(container, path: str, exact: bool) -> tuple[VideoInfo, bool]:
    """(VideoInfo, whether packets were read: the container must then be reopened to decode)."""
    av = _av()
    stream = container.streams.video[0]
    cc = stream.codec_context
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    consumed = True
    try:
        if exact:
            stream.thread_type = "AUTO"
            n = sum(1 for _ in container.decode(stream))
        elif stream.frames:
            n, consumed = int(stream.frames), False
        else:  # no count in the header (WebM, MKV): count packets, check against the duration
            n = _count_packets(container, stream)
            expect = duration * fps
            if n and n < 0.8 * expect - 2:
                raise VideoDecodeError(
                    path,
                    f"truncated: {n} frames present, the header's duration {duration:.2f} s "
                    f"at {fps:.3g} fps implies about {round(expect)}",
                    num_decoded=n,
                    kind="truncated",
                )
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"corrupt stream ({type(e).__name__}: {e})") from None
    if n <= 0:
        raise VideoDecodeError(path, "video stream has no frames", num_decoded=0)
    rot = _rotation_of(container)
    w, h = (cc.height, cc.width) if rot in (90, 270) else (cc.width, cc.height)
    return VideoInfo(path, n, fps, w, h, cc.name, duration, exact, rot), consumed


def _rotation_of(container) -> int:
    """The clockwise turn (0, 90, 180, 270) that makes the video upright, from the display matrix of
    an mp4/mov file's video track (``tkhd``; what phones write); 0 for other containers or none.
    PyAV shows the matrix only on decoded frames, so the header is read here, without decoding."""
    names = set(container.format.name.split(","))
    if not names & {"mov", "mp4", "m4a", "3gp", "3g2", "mj2"}:
        return 0
    try:
        st = os.stat(container.name)
        return _mp4_rotation(container.name, st.st_size, st.st_mtime_ns)
    except (OSError, ValueError, struct.error):
        return 0


@functools.lru_cache(maxsize=4096)  # once per file (and version of it), not once per sample
def _mp4_rotation(path: str, size: int = -1, mtime_ns: int = -1) -> int:
    """Walk the boxes moov/trak/tkhd of an ISO-BMFF file (seeking past mdat) -> the rotation of the
    first track with a picture size."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size

        def boxes(start: int, end: int):
            pos = start
            while pos + 8 <= end:
                fh.seek(pos)
                n, kind = struct.unpack(">I4s", fh.read(8))
                head = 8
                if n == 1:
                    n, head = struct.unpack(">Q", fh.read(8))[0], 16
                elif n == 0:
                    n = end - pos
                if n < head:
                    return
                yield kind, pos + head, min(pos + n, end)
                pos += n

        for kind, a, b in boxes(0, size):
            if kind != b"moov":
                continue
            for kind2, a2, b2 in boxes(a, b):
                if kind2 != b"trak":
                    continue
                for kind3, a3, _ in boxes(a2, b2):
                    if kind3 != b"tkhd":
                        continue
                    fh.seek(a3)
                    version = fh.read(1)[0]
                    fh.seek(a3 + 4 + (32 if version == 1 else 20) + 16)
                    m = struct.unpack(">9i", fh.read(36))
                    w, h = struct.unpack(">II", fh.read(8))
                    if w == 0 or h == 0:
                        break  # an audio track: next trak
                    # (a, b, c, d) in 16.16; the picture turns by atan2(b, a) degrees clockwise
                    deg = math.degrees(math.atan2(m[1], m[0]))
                    return int(round(deg / 90.0)) % 4 * 90
            return 0
    return 0


def _upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Turn an (H, W, 3) frame ``rotation`` degrees clockwise (a copy, contiguous)."""
    if not rotation:
        return img
    return np.ascontiguousarray(np.rot90(img, k=-(rotation // 90)))


def _video_stream(container, threads: int | None):
    """The first video stream, set up for decoding (frame threads; ``threads`` of them if given)."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if threads:
        stream.codec_context.thread_count = threads
    return stream


def decode_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    seek_gap: int | None = DEFAULT_SEEK_GAP,
    skip_nonref: bool = True,
    accurate_rgb: bool = False,
    threads: int = 0,
) -> torch.Tensor:
    """Decode the frames ``indices`` of ``path`` -> uint8 tensor (len(indices), H, W, 3), RGB.

    Index i is the i-th decoded frame in display order; indices may repeat and come in any order
    (each distinct frame is decoded once). Equivalent to ``torch.stack([all_frames[i] for i in
    indices])`` where ``all_frames`` is every frame of the file decoded in order, but decodes only up
    to the last wanted index and seeks forward to a keyframe when that skips at least ``seek_gap``
    packets (``seek_gap=None``: never seek); ``skip_nonref`` skips unwanted non-reference H.264/HEVC
    frames (see the module docstring). ``threads``: FFmpeg decoder threads (0: FFmpeg decides).

    YUV -> RGB: by default swscale's fast conversion (~1 ms a 480p frame here; its chroma upsampling
    is coarse: up to ~40 levels off at sharp colour edges, ~2 on average). ``accurate_rgb=True``
    upsamples chroma bilinearly with exact rounding (~8 ms a 480p frame): bit-identical to DALI.

    Raises VideoDecodeError on unreadable files and when an index is past the last frame (its
    ``num_decoded`` then holds the number of frames the file really has).
    """
    frames, _, _ = decode_clip(
        path, lambda info: indices, seek_gap=seek_gap, skip_nonref=skip_nonref,
        accurate_rgb=accurate_rgb, threads=threads, _probe=False,
    )  # fmt: skip
    return frames


def decode_clip(
    path: str | os.PathLike,
    plan,
    *,
    seek_gap: int | None = DEFAULT_SEEK_GAP,
    skip_nonref: bool = True,
    accurate_rgb: bool = False,
    threads: int = 0,
    _probe: bool = True,
) -> tuple[torch.Tensor, VideoInfo | None, list[int]]:
    """``video_info`` and ``decode_frames`` on one opening of the file: ``plan(info)`` returns the
    indices to decode. Returns (frames uint8 (N, H, W, 3), info, indices). The Dataset uses it."""
    path = os.fspath(path)
    av = _av()
    rgb = _rgb_converter(accurate_rgb)
    container = _open(path)
    try:
        info, consumed = _info(container, path, False) if _probe else (None, False)
        indices = plan(info)
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        if not idx:
            raise ValueError("indices: expected at least one frame index, got none")
        if min(idx) < 0:
            raise ValueError(f"indices: expected indices >= 0, got {min(idx)}")
        wanted = sorted(set(idx))
        if consumed:  # the packets were read to count them: start again
            container.close()
            container = _open(path)
        stream = _video_stream(container, threads)
        try:
            frames = _decode(container, stream, wanted, seek_gap, skip_nonref, rgb)
            if frames is _RESTART:  # the packet plan did not match the decoder: count plainly
                container.close()
                container = _open(path)
                stream = _video_stream(container, threads)
                frames = _decode_plain(container, stream, wanted, rgb)
        except av.FFmpegError as e:
            raise VideoDecodeError(path, f"corrupt stream ({type(e).__name__}: {e})") from None
    finally:
        container.close()
    if isinstance(frames, int):
        raise VideoDecodeError(
            path,
            f"frame {wanted[-1]} asked for, the video has {frames} frames",
            num_decoded=frames,
            kind="past_end",
        )
    shapes = {f.shape for f in frames.values()}
    if len(shapes) != 1:
        raise VideoDecodeError(path, f"frame size changes inside the video: {sorted(shapes)}")
    return torch.from_numpy(np.stack([frames[i] for i in idx])), info, idx


_RESTART = object()


_local = threading.local()


def _forget_reformatters() -> None:
    """A forked child (DataLoader, checker or prepare workers) must not reuse the parent's swscale
    contexts: their thread pools do not exist in the child, and the first conversion waits for them
    forever. Ours (``_local``) and PyAV's own: from PyAV 18.1.1 ``frame.reformat``/``to_ndarray``
    keep one per thread, so a parent that converted one frame deadlocked every forked worker that
    converts another (a user's dataset, ``prepare``'s cutter). The inherited ones are kept, never
    freed: freeing such a context waits for its pool's threads as well."""
    global _local
    _inherited.append(_local)
    _local = threading.local()
    frame_module = sys.modules.get("av.video.frame")
    if frame_module is not None and hasattr(frame_module, "_thread_local"):
        _inherited.append(frame_module._thread_local)
        frame_module._thread_local = threading.local()


_inherited: list = []  # the parent's converters in a forked child: unusable, and unsafe to free


os.register_at_fork(after_in_child=_forget_reformatters)


def _rgb_converter(accurate: bool):
    """frame -> (H, W, 3) uint8 RGB through one reformatter per thread: PyAV's ``to_ndarray`` makes a
    new swscale context for every new frame (4 ms for a 64x64 frame here, 50x the conversion)."""
    from av.video.reformatter import Interpolation, VideoReformatter

    # one per thread; a forked child starts with none (_forget_reformatters); threads=1 keeps
    # swscale from making a thread pool
    if getattr(_local, "reformatter", None) is None:
        _local.reformatter = VideoReformatter()
    reformat = _local.reformatter.reformat
    if not accurate:
        flags = None
    else:  # bilinear chroma upsampling + exact rounding: bit-identical to DALI's decoder output
        flags = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND

    def rgb(frame) -> np.ndarray:
        img = reformat(frame, format="rgb24", interpolation=flags, threads=1).to_ndarray()
        # the display matrix (phones): FFmpeg gives the counter-clockwise angle
        return _upright(img, -int(frame.rotation) % 360)

    return rgb


def _decode(container, stream, wanted, seek_gap, skip_nonref, rgb):
    """{index: HxWx3 uint8 array}; or _RESTART (the plain path then decides, also for short files)."""
    # 1. demux until the display rank of every frame up to wanted[-1] is final
    need = wanted[-1]
    packets, pts_list = [], []  # in decode order; pts of shown (non-discarded) packets
    since_check = 0
    for pkt in container.demux(stream):
        if pkt.size == 0:
            continue
        if pkt.pts is None:
            return _RESTART
        packets.append(pkt)
        if not pkt.is_discard:
            pts_list.append(pkt.pts)
        since_check += 1
        if len(pts_list) > need + _REORDER_MARGIN and since_check >= _REORDER_MARGIN:
            since_check = 0
            cut = sorted(pts_list)[need]
            if min(pts_list[-_REORDER_MARGIN:]) > cut:
                break
    if len(pts_list) <= need or len(set(pts_list)) != len(pts_list):
        return _RESTART
    rank = {p: i for i, p in enumerate(sorted(pts_list))}
    disp = [
        None if pkt.is_discard else rank[pkt.pts] for pkt in packets
    ]  # display index per packet
    where = {d: j for j, d in enumerate(disp) if d is not None}  # display index -> decode position
    wanted_set = set(wanted)
    is_ref = _ref_checker(stream) if skip_nonref else None
    keys = [j for j, pkt in enumerate(packets) if pkt.is_keyframe]
    cc = stream.codec_context

    out: dict[int, np.ndarray] = {}
    fed: set[int] = set()  # display indices fed since the last flush
    seen: set[int] = set()  # display indices the decoder returned since the last flush
    state = {"last": -1, "start": 0}  # last output display index; display index of the run start

    def take(frames) -> bool:
        for frame in frames:
            i = rank.get(frame.pts)
            if i is None or i <= state["last"] or i not in fed:
                return False  # not a frame we fed, or out of display order
            state["last"] = i
            seen.add(i)
            if i in wanted_set:
                out[i] = rgb(frame)
        return True

    def drain() -> bool:
        if not take(cc.decode(None)):
            return False
        # every fed frame at or after the run's start must have come out
        if any(i >= state["start"] and i not in seen for i in fed):
            return False
        cc.flush_buffers()
        fed.clear()
        seen.clear()
        return True

    j = 0  # next packet to feed
    started = False
    for target in wanted:
        d = where[target]
        if d < j:
            continue  # already fed (it is inside the decoder or already out)
        # 2a. a keyframe at or before d (in decode order) that is not after target (in display order)
        ks = [k for k in keys[: bisect.bisect_right(keys, d)] if disp[k] is not None]
        ks = [k for k in ks if disp[k] <= target]
        if seek_gap is not None and ks and ks[-1] - j >= seek_gap:
            if started and not drain():
                return _RESTART
            j = ks[-1]
            state["start"], state["last"] = disp[j], -1
        started = True
        while j <= d:
            pkt, i = packets[j], disp[j]
            j += 1
            # 2b. an unwanted non-reference frame: nothing depends on it
            if is_ref is not None and i is not None and i not in wanted_set and not is_ref(pkt):
                continue
            if i is not None:
                fed.add(i)
            if not take(cc.decode(pkt)):
                return _RESTART
    if not drain():
        return _RESTART
    if len(out) != len(wanted_set):
        return _RESTART
    return out


def _ref_checker(stream):
    """A function packet -> False when the packet is a non-reference H.264/HEVC frame, else True;
    None for other codecs (all their frames are fed)."""
    cc = stream.codec_context
    name = cc.name
    if name not in ("h264", "hevc"):
        return None
    extra = bytes(cc.extradata or b"")
    length_size = None  # None: Annex B start codes
    if extra[:1] == b"\x01":
        if name == "h264" and len(extra) >= 5:
            length_size = (extra[4] & 3) + 1
        elif name == "hevc" and len(extra) >= 23:
            length_size = (extra[21] & 3) + 1
        else:
            return None

    def nal_units(data: bytes):
        if length_size is not None:
            i = 0
            while i + length_size < len(data):
                n = int.from_bytes(data[i : i + length_size], "big")
                i += length_size
                if n <= 0 or i + n > len(data):
                    return
                yield data[i : i + 2]
                i += n
        else:
            i = data.find(b"\x00\x00\x01")
            while 0 <= i < len(data) - 4:
                yield data[i + 3 : i + 5]
                i = data.find(b"\x00\x00\x01", i + 3)

    def is_ref(pkt) -> bool:
        for head in nal_units(bytes(pkt)):
            if name == "h264":
                kind = head[0] & 0x1F
                if 1 <= kind <= 5:  # a slice: its nal_ref_idc says whether others may use it
                    return (head[0] >> 5) & 3 != 0
            else:
                kind = (head[0] >> 1) & 0x3F
                if kind <= 31:  # VCL: even types below 16 are sub-layer non-reference pictures
                    return not (kind <= 14 and kind % 2 == 0)
        return True

    return is_ref


def _decode_plain(container, stream, wanted: list[int], rgb):  # the definition of index i
    """Count decoded frames from the start: {index: array}, or the frame count if it ends early."""
    out: dict[int, np.ndarray] = {}
    pos, k = -1, 0
    for frame in container.decode(stream):
        pos += 1
        if pos == wanted[k]:
            out[pos] = rgb(frame)
            k += 1
            if k == len(wanted):
                return out
    return pos + 1


# ----------------------------------------------------------------------------------------------
# Frame times: one definition for the decoder, prepare and check
# ----------------------------------------------------------------------------------------------

# Timestamps that come out of order are put back in order within this many frames (H.264/HEVC
# reorder at most 16; the AVI and broken-GOP cases seen in practice are within 4).
TIME_REORDER_WINDOW = 16


def monotonic_times(frames, step: Fraction | None = None, window: int = TIME_REORDER_WINDOW):
    """Give each decoded frame a timestamp that never decreases with its index.

    frames: iterable of (item, ts) in the decoder's output order, ts the frame's best-effort
    timestamp in stream ticks (``frame.pts``, else the packet's ``dts``; None when missing).
    step: one frame's duration in ticks (from the average frame rate), used to fill missing ones.
    Yields (item, ticks) with ticks a Fraction, strictly increasing:

    1. a missing timestamp is the previous one plus ``step`` (the first missing one: 0);
    2. the timestamps of the frames are sorted: the i-th frame gets the i-th smallest of them, within
       a window of ``window`` frames (containers that store decode-order times, such as AVI with
       B-frames, or a broken first GOP, give 1, 3, 4, 2, ...: the frames keep their order and get
       1, 2, 3, 4);
    3. a timestamp not above its predecessor's (a repeat, or one too far out of order for the
       window) becomes the predecessor's plus one tick.

    The result depends only on the frames within ``window`` of each other, so decoding from a
    keyframe (after a seek) gives the same times as decoding from the file's start.
    """
    import heapq

    step = Fraction(step) if step else Fraction(1)
    buf: list = []  # items waiting for their timestamp, in output order
    heap: list = []  # their timestamps
    prev_raw: Fraction | None = None
    last: Fraction | None = None

    def emit(item):
        nonlocal last
        t = heapq.heappop(heap)
        if last is not None and t <= last:
            t = last + 1
        last = t
        return item, t

    for item, ts in frames:
        if ts is None:
            ts = Fraction(0) if prev_raw is None else prev_raw + step
        ts = Fraction(ts)
        prev_raw = ts
        buf.append(item)
        heapq.heappush(heap, ts)
        if len(buf) > window:
            yield emit(buf.pop(0))
    while buf:
        yield emit(buf.pop(0))


def _origin(container, stream) -> Fraction:
    """Seconds of the container's start: the origin ``ffmpeg -ss`` counts from."""
    if container.start_time is not None:  # microseconds
        return Fraction(container.start_time, 1_000_000)
    return (stream.start_time or 0) * stream.time_base


def _step(stream) -> Fraction | None:
    rate = stream.average_rate or stream.guessed_rate
    if not rate or not stream.time_base:
        return None
    return 1 / (Fraction(rate) * stream.time_base)


def timed_frames(container, stream):
    """Yield (frame, seconds) for the frames ``container.decode(stream)`` gives from its position:
    the time of :func:`monotonic_times`, in seconds from the container's start."""
    tb, origin = stream.time_base, _origin(container, stream)

    def raw():
        for f in container.decode(stream):
            yield f, (f.pts if f.pts is not None else f.dts)

    for frame, ticks in monotonic_times(raw(), _step(stream)):
        yield frame, ticks * tb - origin


def frame_times(path: str | os.PathLike) -> list[Fraction]:
    """Every frame's time in seconds (exact fractions) from the container's start, by index (the
    definition of :func:`monotonic_times`; decodes the whole file). ``prepare`` cuts the frames
    with start <= t < end of this list."""
    av = _av()
    path = os.fspath(path)
    container = _open(path)
    try:
        stream = _video_stream(container, None)
        return [t for _, t in timed_frames(container, stream)]
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"corrupt stream ({type(e).__name__}: {e})") from None
    finally:
        container.close()


# ----------------------------------------------------------------------------------------------
# Streaming: every frame of a file in one pass, RGB only where wanted (long videos)
# ----------------------------------------------------------------------------------------------


def stream_frames(
    path: str | os.PathLike,
    want=None,
    *,
    threads: int = 0,
    accurate_rgb: bool = False,
    skip_nonref: bool = True,
):
    """Open ``path`` once and decode it from start to end: -> (VideoInfo, iterator).

    The iterator yields ``(i, rgb)`` for every frame, i its index (the definition of
    ``decode_frames``: the i-th frame the decoder outputs), ``rgb`` the uint8 (H, W, 3) upright
    frame when ``want(i)`` is true (every frame when ``want`` is None), else None (no colour
    conversion is paid for it). Nothing is kept: memory does not depend on the file's length.
    It closes the file when exhausted or closed. A stream that breaks mid-way raises
    VideoDecodeError(kind="corrupt") with ``num_decoded`` = the frames yielded so far; opening
    failures raise it at once (as ``video_info`` does).

    ``skip_nonref`` (with ``want``; H.264/HEVC): an unwanted non-reference frame is not decoded at
    all (it is still yielded, as ``(i, None)``): no other frame depends on it, so the wanted
    frames are the same as with every frame decoded (``decode_frames``' rule, step 2b of the module
    docstring, applied as the packets stream past: a packet's display index is the rank of its
    timestamp, final once ``_REORDER_MARGIN`` later packets have been read). Nothing is skipped
    before the decoder has returned its first frame as index 0; on any surprise (missing or
    repeated timestamps, a frame that is not the one expected) the file is decoded again plainly
    from the start and the frames not yet yielded come from that pass.
    """
    av = _av()
    path = os.fspath(path)
    container = _open(path)
    try:
        info, consumed = _info(container, path, False)
        if consumed:
            container.close()
            container = _open(path)
        stream = _video_stream(container, threads)
    except BaseException:
        container.close()
        raise
    rgb = _rgb_converter(accurate_rgb)
    is_ref = _ref_checker(stream) if skip_nonref and want is not None else None
    held = {"container": container, "stream": stream}

    def frames():
        done = 0  # frames yielded so far
        try:
            if is_ref is not None:
                for item in _stream_skipping(held["container"], held["stream"], want, is_ref, rgb):
                    if item is _RESTART:
                        break
                    done = item[0] + 1
                    yield item
                else:
                    return
                held["container"].close()  # a surprise: the plain pass decides from here on
                held["container"] = _open(path)
                held["stream"] = _video_stream(held["container"], threads)
            i = -1
            for frame in held["container"].decode(held["stream"]):
                i += 1
                if i >= done:
                    item = (i, rgb(frame) if want is None or want(i) else None)
                    done = i + 1
                    yield item
        except av.FFmpegError as e:
            raise VideoDecodeError(
                path, f"corrupt stream after frame {done - 1} ({type(e).__name__}: {e})", done
            ) from None
        finally:
            held["container"].close()

    return info, frames()


class _Surprise(Exception):
    """The packets do not behave as _stream_skipping assumes: decode plainly instead."""


def _stream_skipping(container, stream, want, is_ref, rgb):
    """stream_frames' skipping pass: yields (i, rgb or None) in index order, then ends, or ends
    with _RESTART (a surprise) after the frames it could vouch for. A demuxing error (a cut or
    damaged file) is raised after the frames decodable before it have been yielded."""
    import heapq
    from collections import deque

    av = _av()
    cc = stream.codec_context
    pending: deque = deque()  # packets in decode order, not yet fed or skipped
    unranked: list = []  # heap of (pts, serial) of shown packets without a display index yet
    rank_of: dict = {}  # pts -> display index, for ranked frames not yet out
    fed: list = []  # heap of display indices fed to the decoder, not yet out
    skipped: list = []  # heap of display indices skipped, not yet yielded
    st = {"serial": 0, "next_rank": 0, "last_pts": None, "next_out": 0, "verified": False}

    def finalize(everything: bool) -> None:
        # the smallest pending timestamp is the next display index once MARGIN packets came after
        while unranked and (everything or st["serial"] - unranked[0][1] >= _REORDER_MARGIN):
            pts, _ = heapq.heappop(unranked)
            if st["last_pts"] is not None and pts <= st["last_pts"]:
                raise _Surprise  # a repeated timestamp
            rank_of[pts] = st["next_rank"]
            st["next_rank"] += 1
            st["last_pts"] = pts

    def out(decoded):
        for frame in decoded:
            r = rank_of.pop(frame.pts, None)
            if r is None or not fed or fed[0] != r or (not st["verified"] and r != 0):
                raise _Surprise  # not the next frame fed, or a fed frame never came out
            heapq.heappop(fed)
            while skipped and skipped[0] < r:
                s = heapq.heappop(skipped)
                if s != st["next_out"]:
                    raise _Surprise
                st["next_out"] = s + 1
                yield s, None
            if r != st["next_out"]:
                raise _Surprise
            st["next_out"] = r + 1
            st["verified"] = True
            yield r, (rgb(frame) if want(r) else None)

    def feed():
        while pending:
            pkt = pending[0]
            if not pkt.is_discard:
                r = rank_of.get(pkt.pts)
                if r is None:
                    return  # its display index is not final yet
                if st["verified"] and not want(r) and not is_ref(pkt):
                    pending.popleft()  # unwanted, and no other frame refers to it
                    del rank_of[pkt.pts]
                    heapq.heappush(skipped, r)
                    continue
                heapq.heappush(fed, r)
            pending.popleft()
            yield from out(cc.decode(pkt))

    try:
        packets = container.demux(stream)
        damage = None
        while True:
            try:
                pkt = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as e:
                damage = e  # decode what came before it, then raise
                break
            if pkt.size == 0:
                continue
            if pkt.pts is None:
                raise _Surprise
            st["serial"] += 1
            pending.append(pkt)
            if not pkt.is_discard:
                if st["last_pts"] is not None and pkt.pts <= st["last_pts"]:
                    raise _Surprise  # reordered further than the margin, or a repeat
                heapq.heappush(unranked, (pkt.pts, st["serial"]))
            finalize(False)
            yield from feed()
        finalize(True)
        yield from feed()
        if pending:
            raise _Surprise
        yield from out(cc.decode(None))
        if fed:
            raise _Surprise
        while skipped:
            s = heapq.heappop(skipped)
            if s != st["next_out"]:
                raise _Surprise
            st["next_out"] = s + 1
            yield s, None
        if damage is not None:
            raise damage
    except _Surprise:
        yield _RESTART
