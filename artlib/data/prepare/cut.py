"""Cutting one clip: the frames of a raw video with start <= t < end, re-encoded to H.264.

The time t of a frame is the one definition of ``artlib.data.decode.monotonic_times`` (the decoded
frames' timestamps made monotonic), in seconds from the container's start (the origin ``ffmpeg -ss``
counts from), compared with the span in exact rational arithmetic. The clip's frames, decoded by
``decode_frames``, are therefore exactly the raw video's frames ``i`` with ``start <= t_i < end``,
in order, whatever the raw file's timestamps did (B-frames in AVI, a broken first GOP, a variable
frame rate, a non-zero start time).
"""

from __future__ import annotations

import functools
import math
import os
from fractions import Fraction
from pathlib import Path

from artlib._io import atomic_write
from artlib.data.decode import timed_frames

from .jobs import exact_seconds

__all__ = ["PART_SUFFIX", "PastEndError", "cut_clip", "frame_in_span"]

PART_SUFFIX = ".part"  # artlib._io.atomic_write's temporary files: hidden, never matching *.mp4


class PastEndError(ValueError):
    """The span starts after the raw video's last frame: no clip (the report's ``past_end``)."""


def frame_in_span(t: Fraction, start: Fraction, end: Fraction) -> bool:
    """The inclusion rule: a frame at time ``t`` belongs to the clip of ``[start, end)``."""
    return start <= t < end


def cut_clip(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    start: Fraction | float | str,
    end: Fraction | float | str,
    *,
    gop: int = 16,
    crf: int = 18,
    preset: str = "veryfast",
    threads: int = 1,
) -> tuple[int, str]:
    """Re-encode the frames of ``src`` with ``start <= t < end`` into ``dst`` (H.264, mp4).

    Seeks to the keyframe at or before ``start`` (and decodes from the file's start if the demuxer
    overshoots), decodes on, and encodes exactly the frames of the span, timed from 0 by their
    monotonic times (so a variable frame rate survives, and the muxer always gets increasing
    timestamps). Writes a temporary file and renames it to ``dst`` when complete. Returns
    ``(frames written, note)``; the note is empty unless the source ended before ``end``. Raises
    ValueError for an empty span or one with no frames (:class:`PastEndError` when the whole span
    lies after the video's last frame).
    """
    import av

    _require_usable(src)
    start = start if isinstance(start, Fraction) else exact_seconds(start, "start")
    end = end if isinstance(end, Fraction) else exact_seconds(end, "end")
    if not end > start:
        raise ValueError(f"span: expected end > start, got [{float(start)}, {float(end)})")
    dst = Path(dst)
    n = 0
    last_t: Fraction | None = None
    step = Fraction(0)  # one frame's duration at the average rate
    reached_end = False
    # written to a hidden ``.<name>.<random>.part`` beside dst and renamed when complete; a killed
    # run leaves only .part files, which the next run sweeps (runner)
    with atomic_write(dst, "wb") as part:
        with av.open(str(src)) as inp:
            if not inp.streams.video:
                raise ValueError(f"{src}: no video stream")
            ist = inp.streams.video[0]
            ist.codec_context.thread_count = threads
            if ist.average_rate:
                step = 1 / Fraction(ist.average_rate)
            with av.open(part, "w", format="mp4") as out:
                ost = None
                first_t = None
                last_pts = -1
                for frame, t in _frames_from(src, inp, ist, start, threads):
                    last_t = t
                    if t < start:
                        continue
                    if not frame_in_span(t, start, end):
                        reached_end = True
                        break
                    if ost is None:
                        ost = _add_h264(
                            out, ist, frame, gop=gop, crf=crf, preset=preset, threads=threads
                        )
                        first_t = t
                    tb = ost.codec_context.time_base
                    pts = max(math.floor((t - first_t) / tb), last_pts + 1)
                    last_pts = pts
                    w, h = ost.codec_context.width, ost.codec_context.height
                    rot = -int(frame.rotation) % 360
                    if rot or (frame.width, frame.height) != (w, h):
                        # upright, as the decoder gives it to the trainer; odd sides cropped
                        frame = _upright_even(frame, rot, w, h)
                    if frame.format.name != "yuv420p" or frame.width != w or frame.height != h:
                        frame = frame.reformat(width=w, height=h, format="yuv420p")
                    frame.pts, frame.time_base = pts, tb
                    frame.pict_type = 0  # NONE: the source's keyframes must not force ours
                    out.mux(ost.encode(frame))
                    n += 1
                if ost is None:
                    ends = (
                        ""
                        if last_t is None
                        else f"; the video's last frame is at {float(last_t):.3f} s"
                    )
                    past = last_t is not None and last_t < start
                    raise (PastEndError if past else ValueError)(
                        f"span [{float(start):.3f}, {float(end):.3f}) s holds no frame of {src}{ends}"
                    )
                out.mux(ost.encode())
    note = ""
    # the video ran out inside the span, more than a frame before its end: the clip is cut short
    if not reached_end and last_t is not None and last_t + step < end:
        note = f"source ends at {float(last_t):.3f} s, before the span's end {float(end):.3f} s"
    return n, note


def _require_usable(src) -> None:
    """The usability rule (``artlib.data.probe_video``, metadata mode: no decoding) before cutting:
    a truncated, corrupt, empty or audio-only raw video fails here, as the checker says."""
    st = os.stat(src) if os.path.exists(src) else None
    key = (os.fspath(src), st and st.st_size, st and st.st_mtime_ns)
    probe = _probe_cached(key)
    if not probe.usable:
        raise ValueError(f"{src}: {probe.kind}: {probe.reason}")


@functools.lru_cache(maxsize=64)
def _probe_cached(key):
    from artlib.data.probe import probe_video

    return probe_video(key[0], 1, mode="metadata")


def _frames_from(src, inp, ist, start: Fraction, threads: int):
    """Yield (frame, t) in output order from the keyframe at or before ``start`` on. If the seek
    lands after ``start`` or nowhere (a bad index; MPEG-TS seeks by bytes), decode a fresh opening
    of the file from its start instead: exactness first."""
    import av

    from artlib.data.decode import _origin

    if start > 0:
        target = math.floor((start + _origin(inp, ist)) / ist.time_base)
        inp.seek(target, stream=ist, backward=True, any_frame=False)
        it = timed_frames(inp, ist)
        first = next(it, None)
        if first is not None and first[1] <= start:
            yield first
            yield from it
            return
    else:
        yield from timed_frames(inp, ist)
        return
    with av.open(str(src)) as again:
        stream = again.streams.video[0]
        stream.codec_context.thread_count = threads
        yield from timed_frames(again, stream)


def _upright_even(frame, rotation: int, w: int, h: int):
    """The frame turned ``rotation`` degrees clockwise and cropped to w x h (drops an odd last
    row or column: yuv420p needs even sides), through RGB."""
    import av
    import numpy as np

    img = frame.to_ndarray(format="rgb24")
    if rotation:
        img = np.rot90(img, k=-(rotation // 90))
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:h, :w]), format="rgb24")


def _add_h264(out, ist, frame, *, gop: int, crf: int, preset: str, threads: int):
    rate = ist.average_rate or ist.guessed_rate or Fraction(25)
    ost = out.add_stream("libx264", rate=rate)
    w, h = frame.width, frame.height
    if -int(frame.rotation) % 180:  # turned upright: the sides swap
        w, h = h, w
    # yuv420p needs even sides: an odd last row or column is dropped (rare in practice)
    ost.width, ost.height = w - w % 2, h - h % 2
    ost.pix_fmt = "yuv420p"
    if ist.codec_context.sample_aspect_ratio:  # keep anamorphic sources' display shape
        ost.codec_context.sample_aspect_ratio = ist.codec_context.sample_aspect_ratio
    tb = ist.time_base
    if tb is None or tb.denominator < 1000:  # AVI's 1/25: a finer clock for variable rates
        tb = Fraction(1, 90000)
    ost.time_base = tb
    ost.codec_context.time_base = tb
    ost.codec_context.thread_count = threads
    ost.options = {
        "crf": str(crf),
        "preset": preset,
        "threads": str(threads),
        # a keyframe exactly every `gop` frames (scene-cut keyframes off): seek cost is bounded and
        # predictable, and a sampled frame is at most gop - 1 decodes away from a keyframe
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
    }
    return ost
