"""Writing real video files with PyAV: the synthetic set, the test fixtures and the benchmarks use it.

Codecs: ``"h264"`` (libx264 in .mp4, the PyAV path), ``"vp9"`` (libvpx-vp9 in .webm, which DALI's
CPU decoder reads), ``"mjpeg"`` (.mkv). ``frame_index_image`` draws a frame's own index into its pixels
as a grid of black/white blocks that survives lossy coding; ``read_frame_index`` reads it back, so a
test can tell exactly which frame a decoder returned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np

from artlib._io import atomic_write

__all__ = [
    "CODECS",
    "frame_index_image",
    "read_frame_index",
    "write_broken_videos",
    "write_garbage_video",
    "write_index_video",
    "write_video",
]

# codec name -> (FFmpeg encoder, file extension, pixel format)
CODECS = {
    "h264": ("libx264", ".mp4", "yuv420p"),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p"),
    "mjpeg": ("mjpeg", ".mkv", "yuvj420p"),
}

INDEX_BITS = 16  # a 4 x 4 grid of blocks


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 25,
    codec: str = "h264",
    gop: int | None = None,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    crf: int = 20,
    bframes: int | None = None,
    preset: str = "veryfast",
) -> str:
    """Encode ``frames`` (each (H, W, 3) uint8 RGB, H and W even) into ``path``; returns the path.

    gop: keyframe interval (None: the encoder's default; for H.264 a fixed interval with scene-cut
    keyframes off). preset: the x264 preset (``"medium"`` is x264's default). pts: per-frame presentation timestamps in ``time_base`` units (a variable frame
    rate); default: frame i at i / fps. Written to ``path + '.part'`` and renamed, so an interrupted
    write leaves no half file under ``path``.
    """
    import av

    if codec not in CODECS:
        raise ValueError(f"codec: expected one of {sorted(CODECS)}, got {codec!r}")
    encoder, _, pix_fmt = CODECS[codec]
    path = os.fspath(path)
    fmt = {"h264": "mp4", "vp9": "webm", "mjpeg": "matroska"}[codec]
    with atomic_write(path, "wb") as fh:  # a half-written video never shows under ``path``
        container = av.open(fh, "w", format=fmt)
        try:
            stream = container.add_stream(encoder, rate=fps)
            stream.pix_fmt = pix_fmt
            options = {}
            if codec == "h264":
                options = {"crf": str(crf), "preset": preset}
                params = []
                if gop is not None:
                    params += [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"]
                if bframes is not None:
                    params.append(f"bframes={bframes}")
                if params:
                    options["x264-params"] = ":".join(params)
            elif codec == "vp9":
                options = {"crf": str(crf + 10), "b": "0", "deadline": "realtime", "cpu-used": "8"}
                options["row-mt"] = "1"
                if gop is not None:
                    options["g"] = str(gop)
            elif codec == "mjpeg":
                options = {"q:v": "3"}
            stream.options = options
            if pts is not None:
                tb = time_base or Fraction(1, 1000)
                stream.codec_context.time_base = tb  # the encoder's clock first, then the muxer's
                stream.time_base = tb
            first = True
            for i, img in enumerate(frames):
                img = np.ascontiguousarray(img, dtype=np.uint8)
                if first:
                    stream.height, stream.width = img.shape[:2]
                    first = False
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                if pts is not None:
                    frame.pts = int(pts[i])
                    frame.time_base = tb
                for packet in stream.encode(frame):
                    container.mux(packet)
            if first:
                raise ValueError("frames: expected at least one frame, got none")
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return path


def frame_index_image(index: int, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 frame whose 4 x 4 grid of blocks spells ``index`` in binary (white = 1),
    each block bordered by mid grey so that coding noise stays inside it."""
    if not 0 <= index < 2**INDEX_BITS:
        raise ValueError(f"index: expected 0 <= index < {2**INDEX_BITS}, got {index}")
    img = np.full((height, width, 3), 128, np.uint8)
    bh, bw = height // 4, width // 4
    for b in range(INDEX_BITS):
        r, c = divmod(b, 4)
        val = 255 if (index >> b) & 1 else 0
        img[
            r * bh + bh // 4 : (r + 1) * bh - bh // 4, c * bw + bw // 4 : (c + 1) * bw - bw // 4
        ] = val
    return img


def read_frame_index(frame: np.ndarray) -> int:
    """Inverse of ``frame_index_image`` for a decoded (H, W, 3) frame (any lossy coding)."""
    frame = np.asarray(frame)
    h, w = frame.shape[:2]
    bh, bw = h // 4, w // 4
    index = 0
    for b in range(INDEX_BITS):
        r, c = divmod(b, 4)
        block = frame[
            r * bh + bh // 4 : (r + 1) * bh - bh // 4, c * bw + bw // 4 : (c + 1) * bw - bw // 4
        ]
        if block.mean() > 128:
            index |= 1 << b
    return index


def write_index_video(
    path: str | os.PathLike,
    num_frames: int,
    *,
    size: tuple[int, int] = (64, 64),
    codec: str = "h264",
    fps: int = 25,
    gop: int | None = None,
    vfr: bool = False,
    bframes: int | None = None,
) -> str:
    """A video whose frame i shows i (``frame_index_image``). ``vfr=True`` gives frame durations
    cycling through 0.5, 1.5 and 1 times 1/fps: a variable frame rate, so time-based indexing
    (frame = t·fps) returns the wrong frames while index-based decoding must not."""
    h, w = size
    pts = None
    time_base = None
    if vfr:
        unit = 1000 // (2 * fps)  # ms
        durations = [unit, 3 * unit, 2 * unit]
        pts = np.cumsum([0] + [durations[i % 3] for i in range(num_frames - 1)]).tolist()
        time_base = Fraction(1, 1000)
    frames = (frame_index_image(i, h, w) for i in range(num_frames))
    return write_video(
        path, frames, fps=fps, codec=codec, gop=gop, pts=pts, time_base=time_base, bframes=bframes
    )


def write_garbage_video(path: str | os.PathLike, size: int = 4000, seed: int = 0) -> str:
    """An mp4 signature (an ``ftyp`` box), then ``size`` seeded random bytes: a file that no reader
    opens -> its path. The signature makes FFmpeg's probe choose its mp4 reader on any version;
    bare random bytes may probe as another format (2 of 400 ``os.urandom(3000)`` files opened as
    an lrc subtitle file: "no video stream" instead of corrupt)."""
    path = os.fspath(path)
    with open(path, "wb") as fh:
        fh.write(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomavc1")
        fh.write(np.random.default_rng(seed).bytes(size))
    return path


def write_broken_videos(folder: str | os.PathLike) -> dict[str, str]:
    """Write one file of each broken kind into ``folder`` -> {kind: path}: "missing" (not written),
    "empty" (0 bytes), "garbage" (``write_garbage_video``), "truncated" (an H.264 .mp4 cut in half:
    its index at the end is gone), "truncated_webm" (a VP9 .webm cut in half: fewer frames than its
    header's duration), "audio_only" (an AAC .m4a). For tests of the skip-and-count rules."""
    import av

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    files = {"missing": os.path.join(folder, "missing.mp4")}
    files["empty"] = os.path.join(folder, "empty.mp4")
    open(files["empty"], "wb").close()
    files["garbage"] = write_garbage_video(os.path.join(folder, "garbage.mp4"))
    for kind, codec, ext in (("truncated", "h264", ".mp4"), ("truncated_webm", "vp9", ".webm")):
        whole = write_index_video(os.path.join(folder, f"whole_{codec}{ext}"), 40, codec=codec)
        with open(whole, "rb") as fh:
            data = fh.read()
        os.remove(whole)
        files[kind] = os.path.join(folder, kind + ext)
        with open(files[kind], "wb") as fh:
            fh.write(data[: len(data) // 2])
    files["audio_only"] = os.path.join(folder, "audio_only.m4a")
    with av.open(files["audio_only"], "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
        frame.sample_rate = 16000
        for i in range(10):
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return files
