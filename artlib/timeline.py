"""Actions over time in a long video: sliding windows, one decoding pass, merged segments.

Legend: T frames per window (the checkpoint's), S crop size, N_cls classes, K windows, n frames
a window spans, s frames between window starts.

    model, info = artlib.load_model("runs/synthetic/checkpoints/best.pt")
    res = artlib.predict_timeline(model, info, "routine.mp4", window=2.0, stride=0.5)
    for seg in res["segments"]:
        print(f"{seg['start']:.2f}-{seg['end']:.2f} s {seg['name']} {seg['score']:.2f}")

The window/stride rule (docs/long_videos.md):

- windows sample frames on one grid: a window's T frames are ``g = max(1, round(window * fps /
  T))`` frames apart, a window spans ``n = g * T`` frames (``window`` in seconds, rounded so;
  default :data:`DEFAULT_WINDOW` when the checkpoint records no clip length), and a new window
  starts every ``s = g * max(1, round(stride * fps / g))`` frames (``stride`` rounded to whole
  sample spacings; default a quarter window), so that overlapping windows sample the same frames.
  A last window ends at the video's last frame when the regular ones stop short of it; a video
  shorter than a window gets one window over all its frames;
- inside a window, the T frames are taken as the model was evaluated on trimmed clips: TSN
  segment centres over the window's n frames (frames ``g * t + g // 2``), the centre square
  resized to S and normalised (``artlib.api.load_video``'s pipeline, frame for frame);
- times are frame index / the stream's average frame rate (nominal times for variable-rate files).

The file is decoded once, front to back (``artlib.data.decode.stream_frames``). H.264/HEVC
non-reference frames (x264's non-reference B-frames: about half the frames of a file with
B-frames) that no window samples are not decoded at all: no other frame depends on them, so the
sampled frames are bit-identical to those of a pass that decodes every frame. Only the frames
some window samples are converted to RGB and preprocessed, each once, into a buffer that the
overlapping windows share; a frame leaves the buffer as soon as no window still to come needs
it, so the buffer holds at most about one window's sampled frames, whatever the video's length.
Finished windows go through the model in batches of ``batch_size``; decoding runs in a
background thread at most two batches ahead, so that it overlaps the model, with
``decoder_threads()`` FFmpeg threads (half the cores: the model has the others). While the
batches run, freed memory stays in the process (``artlib._malloc.retain_freed``), so that each
batch's temporaries reuse the pages of the previous one instead of faulting in fresh ones.

Shared frame features: when the model is an ``artlib.models.ART`` in eval mode whose backbone
declares a frame-wise part (methods ``frame_features(frames (N,3,S,S)) -> (N, ...)`` and
``from_frame_features(feats (B,T, ...)) -> (tokens, cls)``, with ``forward(video)`` their
composition; the tiny backbones do), that part runs once per sampled frame, and each window only
runs the rest (the backbone's temporal part and the head) on the features of its T frames: with
the default quarter-window stride a frame is shared by 4 windows. A backbone that also declares
``windows_from_frame_features(feats (F, ...), index (B,T)) -> (tokens, cls)`` (tiny_cnn) gets a
batch's distinct frame features and each window's rows at once, and computes the values of its
temporal part that overlapping windows share once. The probabilities equal the model's forward
on each window's frames up to float rounding. Other models run whole per window.

Segments: each window's probabilities (the softmax of the logits) are smoothed by a centred
moving average over ``smooth`` windows (default 3: the window and its two neighbours); a window
whose top smoothed probability is below ``min_score`` is "no action" (label -1); a run of
fewer than ``min_run`` windows (default 2) between two others takes the label of the neighbour
with the higher smoothed probability over it (a one-window flicker at a boundary is not an
action); consecutive windows with the same label form a segment ``{start, end, label, name,
score}`` (score: the mean smoothed probability of its label over its windows), "no action" runs
are left out. A segment's boundaries lie
halfway between the centres of its first (last) window and the previous (next) window; the
first segment may start at 0 and the last end at the video's duration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_WINDOW",
    "WindowPlan",
    "decoder_threads",
    "merge_segments",
    "plan_windows",
    "plot_timeline",
    "predict_timeline",
    "stream_windows",
]

DEFAULT_WINDOW = 2.0  # seconds: the synthetic set's clips (32 frames at 16 fps); FineGym elements
NO_ACTION = -1


class WindowPlan:
    """Where the windows of one video lie, in frames: ``n`` frames each, starts every ``s``, the
    T sample offsets inside a window (TSN centres), ``num_frames`` the video's frame count.

    ``windows_of(i)`` lists the (window, slot) pairs that sample frame i, in O(T), so that nothing
    proportional to the video's length is ever held.
    """

    def __init__(self, num_frames: int, fps: float, window: float, stride: float, T: int):
        from artlib.data.sampling import sample_indices

        if num_frames < 1:
            raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
        self.fps = float(fps)
        self.num_frames = int(num_frames)
        self.g = max(1, round(window * self.fps / T))  # frames between two samples
        self.n = min(self.num_frames, self.g * T)
        self.s = self.g * max(1, round(stride * self.fps / self.g))
        self.offsets = [int(o) for o in sample_indices(self.n, T, train=False)[0]]
        self.regular = (self.num_frames - self.n) // self.s + 1  # windows k * s, k < regular
        last = (self.regular - 1) * self.s
        self.tail = self.num_frames - self.n if last + self.n < self.num_frames else None
        self.count = self.regular + (self.tail is not None)
        self._slots: dict[int, list[int]] = {}
        for t, o in enumerate(self.offsets):
            self._slots.setdefault(o, []).append(t)

    def start(self, k: int) -> int:
        return self.tail if k == self.regular else k * self.s

    def last_index(self, k: int) -> int:
        """The last frame window k samples: the window is complete once it is decoded."""
        return self.start(k) + self.offsets[-1]

    def windows_of(self, i: int) -> list[tuple[int, int]]:
        out = []
        for o, slots in self._slots.items():
            st = i - o
            if st < 0:
                continue
            if st % self.s == 0 and st // self.s < self.regular:
                out.extend((st // self.s, t) for t in slots)
            if self.tail is not None and st == self.tail:
                out.extend((self.regular, t) for t in slots)
        return out

    def first_needed(self, i: int) -> int:
        """The smallest frame index a window not yet complete after frame i may still need."""
        k = max(0, (i - self.offsets[-1]) // self.s + 1)  # first regular window not complete
        firsts = []
        if k < self.regular:
            firsts.append(k * self.s + self.offsets[0])
        if self.tail is not None and self.tail + self.offsets[-1] > i:
            firsts.append(self.tail + self.offsets[0])
        return min(firsts) if firsts else i + 1

    def times(self, k: int) -> tuple[float, float]:
        st = self.start(k)
        return st / self.fps, (st + self.n) / self.fps


def plan_windows(num_frames: int, fps: float, window: float, stride: float, T: int) -> WindowPlan:
    """The windows of a video of ``num_frames`` frames at ``fps`` (see the module docstring)."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window, stride: expected > 0 seconds, got {window}, {stride}")
    if fps <= 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    return WindowPlan(num_frames, fps, window, stride, T)


def default_window(info: dict) -> float:
    """The checkpoint's training clip length in seconds when it records one, else DEFAULT_WINDOW."""
    value = info.get("clip_seconds") if hasattr(info, "get") else None
    return float(value) if value else DEFAULT_WINDOW


def decoder_threads() -> int:
    """The timeline's FFmpeg decoder threads by default: half the cores this process may use, at
    least 1. The model runs beside the decoder (``predict_timeline``), so the decoder does not
    take every core, and one thread decodes with no synchronisation cost: on 2 cores, frame
    threads (FFmpeg's default, 3 of them) cost 1.2-1.5x the CPU time of one thread on the same file."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def _preprocessor(info: dict) -> Callable:
    """uint8 (H, W, 3) -> float32 (3, S, S): the evaluation pipeline of ``load_video``."""
    from artlib.api import eval_dataset
    from artlib.data.sampling import crop_params

    ds = eval_dataset([], info)
    crops: dict = {}

    def prep(rgb: np.ndarray) -> torch.Tensor:
        h, w = rgb.shape[:2]
        if (h, w) not in crops:
            crops[(h, w)] = crop_params(h, w, train=False)
        return ds.transform(torch.from_numpy(rgb)[None], crops[(h, w)])[0]

    return prep


def stream_windows(
    path: str | os.PathLike,
    info: dict,
    window: float | None = None,
    stride: float | None = None,
    *,
    threads: int | None = None,
    progress: bool = False,
    skip_nonref: bool = True,
):
    """Decode ``path`` once and yield its windows as the model's input -> (plan, iterator of
    (k, clip float32 (T, 3, S, S))), windows in the order they complete. A stream that breaks
    raises VideoDecodeError from the iterator after the windows completed before the damage.
    skip_nonref: H.264/HEVC non-reference frames that no window samples are not decoded
    (``stream_frames``; the sampled frames are the same bit for bit); False decodes every frame."""
    from artlib.data.decode import stream_frames

    T = int(info["num_frames"])
    window = default_window(info) if window is None else float(window)
    stride = window / 4 if stride is None else float(stride)
    holder: dict = {}

    def want(i: int) -> bool:
        return bool(holder["plan"].windows_of(i))

    threads = decoder_threads() if threads is None else threads
    vinfo, frames = stream_frames(path, want, threads=threads, skip_nonref=skip_nonref)
    fps = vinfo.fps or 25.0
    n_total = vinfo.num_frames or max(1, round(vinfo.duration * fps))
    plan = holder["plan"] = plan_windows(n_total, fps, window, stride, T)
    plan.info = vinfo
    prep = _preprocessor(info)

    def run():
        buffer: dict[int, torch.Tensor] = {}  # frame index -> (3, S, S), shared by the windows
        bar = None
        if progress:
            from tqdm import tqdm

            duration = plan.num_frames / plan.fps
            name = os.path.basename(os.fspath(path))
            bar = tqdm(total=round(duration, 1), unit="s", desc=name[:30], file=sys.stderr,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s "
                       "[{elapsed}<{remaining}]")  # fmt: skip
        done_sec = 0.0
        plan.decoded = 0
        plan.peak_buffer = 0  # the most preprocessed frames held at once
        try:
            for i, rgb in frames:
                plan.decoded = i + 1
                if rgb is not None:
                    buffer[i] = prep(rgb)
                    plan.peak_buffer = max(plan.peak_buffer, len(buffer))
                    for k, _t in plan.windows_of(i):
                        if plan.last_index(k) == i:
                            st = plan.start(k)
                            yield k, torch.stack([buffer[st + o] for o in plan.offsets])
                    keep = plan.first_needed(i)
                    for j in [j for j in buffer if j < keep]:
                        del buffer[j]
                if bar is not None and (i + 1) / plan.fps - done_sec >= 1.0:
                    bar.update(round((i + 1) / plan.fps - done_sec, 1))
                    done_sec = round((i + 1) / plan.fps, 1)
        finally:
            if bar is not None:
                bar.update(max(0.0, round(bar.total - done_sec, 1)))
                bar.close()
            frames.close()

    return plan, run()


@torch.no_grad()
def predict_timeline(
    model: nn.Module,
    info: dict,
    path: str | os.PathLike,
    window: float | None = None,
    stride: float | None = None,
    min_score: float = 0.0,
    smooth: int = 3,
    batch_size: int = 16,
    *,
    min_run: int = 2,
    progress: bool = False,
    threads: int | None = None,
    share_frames: bool = True,
    skip_nonref: bool = True,
) -> dict:
    """The timeline of one video: ``{"video", "duration", "fps", "window", "stride", "windows":
    [{"start", "end", "label", "score", "probs"}], "segments": [{"start", "end", "label", "name",
    "score"}]}`` (seconds; ``probs`` (N_cls,) per window, before smoothing). With a file that breaks
    part-way, the result covers the windows before the damage and ``"damage"`` says where; a file
    that cannot be read at all raises ``artlib.data.VideoDecodeError``.

    model, info: ``artlib.load_model``'s. window, stride: seconds (defaults: the module
    docstring). min_score: below it a window is "no action". smooth: windows in the moving average.
    min_run: shorter runs of windows are absorbed by a neighbour (module docstring).
    share_frames: compute a frame-wise backbone's per-frame part once per frame (module
    docstring); False: the whole model per window. skip_nonref: leave undecoded the H.264/HEVC
    non-reference frames that no window samples (module docstring); False: decode every frame.
    threads: FFmpeg decoder threads (None: ``decoder_threads()``; 0: FFmpeg's choice).
    """
    from artlib._malloc import retain_freed
    from artlib.data import VideoDecodeError

    if smooth < 1:
        raise ValueError(f"smooth: expected >= 1 windows, got {smooth}")
    if not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score: expected a probability in [0, 1], got {min_score}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if min_run < 1:
        raise ValueError(f"min_run: expected >= 1 windows, got {min_run}")
    device = next(model.parameters()).device
    plan, clips = stream_windows(path, info, window, stride, threads=threads, progress=progress,
                                 skip_nonref=skip_nonref)  # fmt: skip
    # window -> its N_cls probabilities as Python floats: one small tensor (a view of its batch's
    # output) per window would pin heap memory between the batches' large temporaries, and the
    # resident set would then grow with the video's length (+45 % from 10 to 60 minutes)
    probs: dict[int, list[float]] = {}
    batch: list[tuple[int, torch.Tensor]] = []
    split = _frame_wise(model) if share_frames else None
    cache: dict[int, torch.Tensor] = {}  # frame index -> its frame features, shared by windows
    plan.peak_features = 0  # the most frame features held at once

    def logits(batch) -> torch.Tensor:
        if split is None:
            return model(torch.stack([c for _, c in batch]).to(device))
        frame_features, rest = split
        new: dict[int, torch.Tensor] = {}  # frames no earlier batch computed
        for k, clip in batch:
            for o, px in zip(plan.offsets, clip):
                if plan.start(k) + o not in cache:
                    new.setdefault(plan.start(k) + o, px)
        if new:
            cache.update(zip(new, frame_features(torch.stack(list(new.values())).to(device))))
        frames = sorted({plan.start(k) + o for k, _ in batch for o in plan.offsets})
        row = {f: r for r, f in enumerate(frames)}
        index = torch.tensor([[row[plan.start(k) + o] for o in plan.offsets] for k, _ in batch])
        out = rest(torch.stack([cache[f] for f in frames]), index.to(device))
        plan.peak_features = max(plan.peak_features, len(cache))
        k_next = batch[-1][0] + 1  # windows complete in order: none to come needs earlier frames
        keep = plan.start(k_next) + plan.offsets[0] if k_next < plan.count else plan.num_frames
        for j in [j for j in cache if j < keep]:
            del cache[j]
        return out

    def flush():
        if batch:
            p = logits(batch).float().softmax(-1).cpu()
            for (k, _), row in zip(batch, p.tolist()):
                probs[k] = row
            batch.clear()

    damage = None
    with retain_freed():  # the batches' temporaries reuse the same pages (artlib._malloc)
        try:
            for k, clip in _ahead(clips, 2 * batch_size):
                batch.append((k, clip))
                if len(batch) >= batch_size:
                    flush()
        except VideoDecodeError as e:
            damage = {"time": round(plan.decoded / plan.fps, 3), "frame": plan.decoded,
                      "reason": e.reason}  # fmt: skip
        flush()
    if not probs:
        reason = damage["reason"] if damage else "no frames decoded"
        raise VideoDecodeError(os.fspath(path), reason, plan.decoded)
    ks = sorted(probs)
    duration = plan.num_frames / plan.fps
    if damage is None and plan.decoded < plan.num_frames:  # the header overstated the length
        duration = plan.decoded / plan.fps
    if damage is not None:
        duration = min(duration, damage["time"])
    p = torch.tensor([probs[k] for k in ks], dtype=torch.float32)  # (K, N_cls), the same values
    times = [plan.times(k) for k in ks]
    names = list(info["class_names"])
    windows = [
        {"start": round(a, 3), "end": round(b, 3), "label": int(row.argmax()),
         "score": round(float(row.max()), 4), "probs": [round(float(q), 4) for q in row]}
        for (a, b), row in zip(times, p)
    ]  # fmt: skip
    segments = merge_segments(p, times, names, min_score=min_score, smooth=smooth,
                              duration=duration, min_run=min_run)  # fmt: skip
    out = {
        "video": os.fspath(path),
        "duration": round(duration, 3),
        "fps": round(plan.fps, 3),
        "window": round(plan.n / plan.fps, 3),
        "stride": round(plan.s / plan.fps, 3),
        "windows": windows,
        "segments": segments,
    }
    if damage is not None:
        out["damage"] = damage
    return out


def _frame_wise(model: nn.Module):
    """(frame_features, rest) when ``model`` is an ART in eval mode whose backbone declares a
    frame-wise part (module docstring), else None: ``rest(feats (F, ...), index (B,T))`` -> logits
    (B,N_cls) as ``ART.forward`` computes them from the backbone's output on the windows
    ``feats[index]``."""
    from artlib.models.art import ART

    bb = getattr(model, "backbone", None)
    if not isinstance(model, ART) or model.training:
        return None
    if not (callable(getattr(bb, "frame_features", None))
            and callable(getattr(bb, "from_frame_features", None))):  # fmt: skip
        return None
    windowed = getattr(bb, "windows_from_frame_features", None)

    def rest(feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if callable(windowed):
            tokens, cls = windowed(feats, index)
        else:
            x = feats[index]
            if x.dim() == 5:  # (B,T,C,h,w) feature maps: channels innermost in memory (the same
                # values), on which CPU 3-D convolutions run ~10-20 % faster (oneDNN's blocked layout)
                x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
            tokens, cls = bb.from_frame_features(x)
        if model.head is not None:
            return model.head(tokens, cls)
        return model.fc(model.dropout(cls))

    return bb.frame_features, rest


def _ahead(items, depth: int):
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead: decoding (which
    releases the GIL in FFmpeg) overlaps the model (which releases it in torch), so a pass costs
    about the larger of the two instead of their sum. Exceptions come out in order."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def put(x) -> bool:  # False once the consumer has gone: nothing may block after that
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((end, e))

    thread = threading.Thread(target=work, name="artlib-timeline-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if item is end:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join()
        if hasattr(items, "close"):
            items.close()


def smooth_probs(probs: torch.Tensor, smooth: int) -> torch.Tensor:
    """(K, N_cls) -> (K, N_cls): the centred moving average over ``smooth`` windows (at the ends,
    over the windows that exist)."""
    if smooth <= 1 or probs.shape[0] < 2:
        return probs
    half = smooth // 2
    csum = torch.cat([probs.new_zeros(1, probs.shape[1]), probs.cumsum(0)])
    k = torch.arange(probs.shape[0])
    lo, hi = (k - half).clamp(min=0), (k + (smooth - 1 - half) + 1).clamp(max=probs.shape[0])
    return (csum[hi] - csum[lo]) / (hi - lo).unsqueeze(1).to(probs.dtype)


def _absorb_short_runs(label: torch.Tensor, sp: torch.Tensor, min_run: int) -> torch.Tensor:
    """Runs of fewer than ``min_run`` windows inside the video take the label of the neighbouring
    run (previous or next) whose smoothed probability over the run is higher; repeated until none
    is left (shortest runs first). Runs at either end of the video are kept."""
    label = label.clone()
    while min_run > 1:
        runs, k0 = [], 0  # (start, stop) of each run of equal labels
        for k in range(1, len(label) + 1):
            if k == len(label) or label[k] != label[k0]:
                runs.append((k0, k))
                k0 = k
        short = [i for i in range(1, len(runs) - 1) if runs[i][1] - runs[i][0] < min_run]
        if not short:
            break
        i = min(short, key=lambda j: runs[j][1] - runs[j][0])
        a, b = runs[i]
        prev, nxt = int(label[a - 1]), int(label[b])
        mass = [-1.0 if c == NO_ACTION else float(sp[a:b, c].sum()) for c in (prev, nxt)]
        label[a:b] = prev if mass[0] >= mass[1] else nxt
    return label


def merge_segments(
    probs: torch.Tensor,
    times: list[tuple[float, float]],
    names: list[str],
    min_score: float = 0.0,
    smooth: int = 3,
    duration: float | None = None,
    min_run: int = 2,
) -> list[dict]:
    """Window probabilities (K, N_cls) at ``times`` [(start, end)] -> segments (module docstring)."""
    if probs.shape[0] != len(times):
        raise ValueError(f"probs: {probs.shape[0]} windows, times: {len(times)}")
    if not len(times):
        return []
    sp = smooth_probs(probs, smooth)
    score, label = sp.max(-1)
    label = torch.where(score < min_score, torch.full_like(label, NO_ACTION), label)
    label = _absorb_short_runs(label, sp, min_run)
    score = torch.where(label >= 0, sp.gather(1, label.clamp(min=0)[:, None])[:, 0], score)
    centres = [(a + b) / 2 for a, b in times]
    end_of_video = duration if duration is not None else times[-1][1]
    segments = []
    k0 = 0
    K = len(times)
    for k in range(1, K + 1):
        if k < K and int(label[k]) == int(label[k0]):
            continue
        lab = int(label[k0])
        if lab != NO_ACTION:
            start = 0.0 if k0 == 0 else (centres[k0 - 1] + centres[k0]) / 2
            end = end_of_video if k == K else (centres[k - 1] + centres[k]) / 2
            segments.append({
                "start": round(start, 3), "end": round(end, 3), "label": lab, "name": names[lab],
                "score": round(float(score[k0:k].mean()), 4),
            })  # fmt: skip
        k0 = k
    return segments


def plot_timeline(result: dict, out: str | os.PathLike, top: int = 6) -> None:
    """Draw one ``predict_timeline`` result to ``out`` (PNG): the probabilities over time (window
    centres) of the segments' classes and of the next most probable ones up to ``top`` curves,
    above the merged segments as coloured bars with their names."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    windows = result["windows"]
    p = np.array([w["probs"] for w in windows])  # (K, N_cls)
    t = np.array([(w["start"] + w["end"]) / 2 for w in windows])
    names = {s["label"]: s["name"] for s in result["segments"]}
    order = list(dict.fromkeys(s["label"] for s in result["segments"]))  # always drawn
    extra = [int(c) for c in np.argsort(-p.max(0)) if int(c) not in order]
    order += extra[: max(0, top - len(order))]
    cmap = plt.get_cmap("tab10")
    colour = {int(c): cmap(i % 10) for i, c in enumerate(sorted(set(order) | set(names)))}
    fig, (ax, bar) = plt.subplots(
        2, 1, figsize=(10, 3.8), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for c in order:
        label = names.get(int(c), f"class {int(c)}")
        ax.plot(t, p[:, c], color=colour[int(c)], lw=1.6, label=label)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=7, ncol=min(4, len(order)),
              frameon=False)  # fmt: skip
    fig.suptitle(os.path.basename(result["video"]), fontsize=9, x=0.01, ha="left")
    ax.grid(alpha=0.3)
    for s in result["segments"]:
        bar.barh(0, s["end"] - s["start"], left=s["start"], color=colour[s["label"]],
                 edgecolor="white", height=0.8)  # fmt: skip
        bar.text((s["start"] + s["end"]) / 2, 0, s["name"], ha="center", va="center",
                 fontsize=7, rotation=0 if s["end"] - s["start"] > 1.2 else 90)  # fmt: skip
    bar.set_yticks([])
    bar.set_xlim(0, max(result["duration"], 1e-3))
    bar.set_xlabel("time (s)")
    bar.set_ylabel("segments", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def segments_csv_rows(result: dict) -> list[list]:
    """One ``video,start,end,label,name,score`` row per segment."""
    return [
        [result["video"], s["start"], s["end"], s["label"], s["name"], s["score"]]
        for s in result["segments"]
    ]
