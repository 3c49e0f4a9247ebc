"""Timeline of long videos (artlib.timeline, predict --timeline) and the segment metric."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from ckpt_fixtures import env  # noqa: E402
from timeline_fixtures import FPS, long_video, synthetic_checkpoint  # noqa: E402

from artlib.segment_metrics import (  # noqa: E402
    average_precision,
    evaluate_segments,
    read_finegym_segments,
    read_segments_csv,
    segment_iou,
)
from artlib.timeline import merge_segments, plan_windows  # noqa: E402

ORDER = [2, 6, 1, 7, 3, 0]  # left once, twist cw, down once, twist ccw, right once, up once


@pytest.fixture(scope="session")
def synth_ckpt(tmp_path_factory):
    return synthetic_checkpoint(tmp_path_factory.mktemp("tl") / "probe.pt")


@pytest.fixture(scope="session")
def long_mp4(tmp_path_factory):
    return long_video(tmp_path_factory.mktemp("tlv") / "long.mp4", ORDER)


# ------------------------------------------------------------------------------ window plan


@pytest.mark.parametrize(
    "num_frames,fps,window,stride,T",
    [
        (200, 16, 2.0, 0.5, 8),
        (97, 25, 1.3, 0.45, 4),
        (10, 16, 2.0, 0.5, 8),
        (64, 16, 2.0, 2.5, 8),
        (300, 25, 2.0, 0.5, 8),
        (300, 29.97, 2.0, 0.3, 8),
    ],
)
def test_plan_windows_against_enumeration(num_frames, fps, window, stride, T):
    """windows_of and first_needed agree with listing every window's frames."""
    plan = plan_windows(num_frames, fps, window, stride, T)
    frames = {k: [plan.start(k) + o for o in plan.offsets] for k in range(plan.count)}
    assert all(0 <= f < num_frames for fs in frames.values() for f in fs), frames
    if plan.count > 1:  # the last window ends at the last frame
        assert plan.start(plan.count - 1) + plan.n == num_frames
    for i in range(num_frames):
        expect = sorted((k, t) for k, fs in frames.items() for t, f in enumerate(fs) if f == i)
        assert sorted(plan.windows_of(i)) == expect, (i, expect)
        later = [f for k, fs in frames.items() if fs[-1] > i for f in fs]
        if later:
            assert plan.first_needed(i) <= min(later), (i, min(later))


@pytest.mark.parametrize(
    "fps,window,stride,T,g,n,s",
    [(25, 2.0, 0.5, 8, 6, 48, 12), (16, 2.0, 0.5, 8, 4, 32, 8), (29.97, 2.0, 0.3, 8, 7, 56, 7),
     (25, 1.3, 0.45, 4, 8, 32, 8), (25, 0.1, 0.1, 8, 1, 8, 2)],
)  # fmt: skip
def test_windows_sample_one_frame_grid(fps, window, stride, T, g, n, s):
    """The documented rule: samples g = round(window * fps / T) frames apart, windows of g * T
    frames, strides of whole spacings; so every regular window samples frames g * j + g // 2 and
    a frame is sampled by n / s windows."""
    plan = plan_windows(3000, fps, window, stride, T)
    assert (plan.g, plan.n, plan.s) == (g, n, s)
    assert plan.offsets == [g * t + g // 2 for t in range(T)], plan.offsets
    frames = [plan.start(k) + o for k in range(plan.regular) for o in plan.offsets]
    assert all((f - g // 2) % g == 0 for f in frames)
    shared = [len(plan.windows_of(i)) for i in range(n, 2 * n) if (i - g // 2) % g == 0]
    assert shared == [n // s] * len(shared), shared


def test_merge_segments_by_hand():
    """Windows of 2 s every 0.5 s (centres 1.0, 1.5, ...): labels 0 0 1 1 1 -> two segments, the
    boundary halfway between centres 1.5 and 2.0; a low window is 'no action' and left out."""
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.45, 0.55]])
    times = [(0.5 * k, 0.5 * k + 2) for k in range(5)]
    segs = merge_segments(p, times, ["a", "b"], smooth=1, duration=4.0)
    assert [(s["start"], s["end"], s["name"]) for s in segs] == [(0.0, 1.75, "a"), (1.75, 4.0, "b")]
    assert segs[0]["score"] == pytest.approx(0.85)
    segs = merge_segments(p, times, ["a", "b"], smooth=1, min_score=0.6, duration=4.0)
    assert [(s["start"], s["end"], s["label"]) for s in segs] == [(0.0, 1.75, 0), (1.75, 2.75, 1)]


def test_short_runs_and_smoothing_by_hand():
    """A one-window flicker (b) inside a: kept with min_run=1, absorbed with min_run=2; the
    moving average over 3 windows: the mean of each window and its neighbours (2 at the ends)."""
    from artlib.timeline import smooth_probs

    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3], [0.9, 0.1]])
    times = [(0.5 * k, 0.5 * k + 2) for k in range(5)]
    segs = merge_segments(p, times, ["a", "b"], smooth=1, min_run=1, duration=4.0)
    assert [(s["start"], s["end"], s["name"]) for s in segs] == [
        (0.0, 1.75, "a"), (1.75, 2.25, "b"), (2.25, 4.0, "a")]  # fmt: skip
    segs = merge_segments(p, times, ["a", "b"], smooth=1, min_run=2, duration=4.0)
    assert [(s["start"], s["end"], s["name"]) for s in segs] == [(0.0, 4.0, "a")]
    assert segs[0]["score"] == pytest.approx((0.9 + 0.8 + 0.4 + 0.7 + 0.9) / 5)
    expect = torch.stack([(p[0] + p[1]) / 2, (p[0] + p[1] + p[2]) / 3, (p[1] + p[2] + p[3]) / 3,
                          (p[2] + p[3] + p[4]) / 3, (p[3] + p[4]) / 2])  # fmt: skip
    torch.testing.assert_close(smooth_probs(p, 3), expect)


def test_stream_windows_equal_load_video_frames(tmp_path):
    """Each streamed window is the evaluation pipeline on decode_frames of its frames."""
    from artlib.api import eval_dataset
    from artlib.data import decode_frames
    from artlib.data.sampling import crop_params
    from artlib.timeline import stream_windows

    path = long_video(tmp_path / "v.mp4", [0, 1])  # 64 frames of 64x64
    info = {"num_frames": 4, "crop_size": 32, "mean": [0.4] * 3, "std": [0.25] * 3}
    # 1.5 s at 16 fps: 4 frames 6 apart (24 frames); 0.3 s -> one spacing: 7 windows + a tail
    plan, windows = stream_windows(path, info, window=1.5, stride=0.3)
    got = dict(windows)
    assert (plan.n, plan.s) == (24, 6), (plan.n, plan.s)
    assert sorted(got) == list(range(plan.count)) and plan.count == 8, (sorted(got), plan.count)
    ds = eval_dataset([], info)
    for k, clip in got.items():
        idx = [plan.start(k) + o for o in plan.offsets]
        ref = ds.transform(decode_frames(path, idx), crop_params(64, 64, train=False))
        torch.testing.assert_close(clip, ref, rtol=0, atol=0, msg=f"window {k} frames {idx}")


def test_stream_frames_equal_decode_frames(tmp_path):
    """Every index once, in order; RGB only where wanted, equal to decode_frames' frames."""
    from artlib.data import VideoDecodeError, decode_frames
    from artlib.data.decode import stream_frames

    path = long_video(tmp_path / "s.mp4", [3, 5])  # 64 frames
    info, frames = stream_frames(path, lambda i: i % 5 == 0)
    got = list(frames)
    assert info.num_frames == 64 and [i for i, _ in got] == list(range(64))
    assert all((rgb is None) == (i % 5 != 0) for i, rgb in got)
    want = [i for i, rgb in got if rgb is not None]
    ref = decode_frames(path, want).numpy()
    for j, i in enumerate(want):
        np.testing.assert_array_equal(got[i][1], ref[j], err_msg=f"frame {i}")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 300)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        stream_frames(bad)


def _bframe_video(path, n=120, gop=48):
    """A 96x64 H.264 file with B-frames (x264's non-reference B-frames) of moving noise."""
    from artlib.data._write import write_video

    rng = np.random.default_rng(5)
    tex = rng.integers(0, 256, (64, 96 + 3 * n, 3), dtype=np.uint8)
    frames = [tex[:, 3 * i : 3 * i + 96].copy() for i in range(n)]
    return write_video(str(path), frames, fps=25, gop=gop, crf=20, bframes=3)


def _stream(path, want, **kw):
    from artlib.data.decode import stream_frames

    return list(stream_frames(path, want, **kw)[1])


def _assert_same_frames(got, ref):
    idx = [i for i, _ in got]
    assert idx == [i for i, _ in ref] == list(range(len(ref))), idx[:40]
    for (i, a), (_, b) in zip(got, ref):
        assert (a is None) == (b is None), f"frame {i}: rgb {a is not None} vs {b is not None}"
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=f"frame {i}")


@pytest.mark.parametrize("every", [6, 5, 1])
def test_stream_frames_skipping_nonref_is_exact(tmp_path, monkeypatch, every):
    """Unwanted non-reference frames are not decoded, and the wanted frames are bit-identical to
    a pass that decodes every frame; every index is still yielded once, in order."""
    import artlib.data.decode as decode

    path = _bframe_video(tmp_path / "b.mp4")
    judged = []  # (packet pts, is a reference frame)
    real = decode._ref_checker

    def checker(stream):
        f = real(stream)
        return lambda pkt: judged.append(f(pkt)) or judged[-1]

    monkeypatch.setattr(decode, "_ref_checker", checker)
    restarts = []
    real_skipping = decode._stream_skipping

    def skipping(*a):
        for item in real_skipping(*a):
            if item is decode._RESTART:
                restarts.append(1)
            yield item

    monkeypatch.setattr(decode, "_stream_skipping", skipping)

    def want(i):
        return i % every == 3 % every

    got = _stream(path, want)
    ref = _stream(path, want, skip_nonref=False)
    _assert_same_frames(got, ref)
    assert not restarts, "the skipping pass gave up on a plain H.264 file"
    if every > 1:  # frames were skipped: some packets were judged non-reference and not wanted
        assert judged.count(False) > 0, judged
    assert sum(rgb is not None for _, rgb in got) == len(range(3 % every, 120, every))


def test_stream_frames_skipping_falls_back_on_a_surprise(tmp_path, monkeypatch):
    """A display rank finalised too early (margin 0: B-frames arrive after a later frame was
    ranked) is noticed; the plain pass then gives the same frames, each index once."""
    import artlib.data.decode as decode

    path = _bframe_video(tmp_path / "b.mp4")
    want = lambda i: i % 4 == 1  # noqa: E731
    ref = _stream(path, want, skip_nonref=False)
    monkeypatch.setattr(decode, "_REORDER_MARGIN", 0)
    restarts = []
    real_skipping = decode._stream_skipping

    def skipping(*a):
        for item in real_skipping(*a):
            restarts.append(item is decode._RESTART)
            yield item

    monkeypatch.setattr(decode, "_stream_skipping", skipping)
    _assert_same_frames(_stream(path, want), ref)
    assert restarts and restarts[-1], "margin 0 should have been caught"


def test_one_pass_and_a_buffer_that_does_not_grow(tmp_path, monkeypatch):
    """Each video is opened and decoded once; the shared buffer's peak is the same for a video
    3x longer and stays within the frames two overlapping windows sample."""
    import artlib.data.decode as decode
    from artlib.timeline import stream_windows

    calls = []
    real = decode.stream_frames
    monkeypatch.setattr(decode, "stream_frames", lambda *a, **k: calls.append(a) or real(*a, **k))
    info = {"num_frames": 8, "crop_size": 32, "mean": [0.4] * 3, "std": [0.25] * 3}
    peaks = []
    for labels in ([0, 1], [0, 1, 2, 3, 0, 1]):  # 4 s and 12 s
        path = long_video(tmp_path / f"v{len(labels)}.mp4", labels)
        plan, windows = stream_windows(path, info, window=2.0, stride=0.5)
        assert len(list(windows)) == plan.count
        peaks.append(plan.peak_buffer)
    assert len(calls) == 2, calls
    assert peaks[0] == peaks[1] <= 2 * 8, peaks


# ------------------------------------------------------------------------------ shared frame features


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_cnn_t1", "tiny"])
def test_frame_wise_backbone_is_its_forward(name):
    """forward(video) = from_frame_features(frame_features(its frames)), for frames given in
    another grouping (one batch of the distinct frames, as the timeline does)."""
    from artlib.models import build_backbone

    torch.manual_seed(0)
    bb = build_backbone(name, pretrained=None).eval()
    video = torch.randn(3, 8, 3, 64, 64)
    with torch.no_grad():
        tokens, cls = bb(video)
        feats = bb.frame_features(video.flatten(0, 1).flip(0)).flip(0)  # another batch order
        t2, c2 = bb.from_frame_features(feats.unflatten(0, (3, 8)))
    torch.testing.assert_close(t2, tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c2, cls, rtol=1e-5, atol=1e-5)


def _windows_reference(bb, feats, index):
    """tiny_cnn's temporal part written out per window from its definition (Conv3d, BatchNorm
    with the running statistics, ReLU, residual; cls the mean, tokens + positional embedding),
    independent of the backbone's own forward."""
    import torch.nn.functional as F

    x = feats[index].transpose(1, 2)  # (B, C, T, h, w)
    for blk in bb.temporal:
        conv, bn = blk[0], blk[1]
        y = F.conv3d(x, conv.weight, padding=1)
        y = (y - bn.running_mean[:, None, None, None]) / torch.sqrt(
            bn.running_var[:, None, None, None] + bn.eps
        ) * bn.weight[:, None, None, None] + bn.bias[:, None, None, None]
        x = x + y.clamp(min=0)
    cls = x.mean(dim=(2, 3, 4))
    tokens = x.flatten(3).permute(0, 2, 3, 1) + bb.positional_embedding
    return tokens, cls


@pytest.mark.parametrize("width", [64, 16])
def test_windows_from_frame_features_equals_each_window(width):
    """tiny_cnn's shared temporal part over overlapping windows (BatchNorm folded, each value
    that windows share computed once) equals the per-window computation, forward and gradient
    w.r.t. the frame features, in float64: windows every 2 frames, a tail window off that grid,
    windows with repeated frames (a video shorter than the window), random BatchNorm statistics."""
    from artlib.models.tiny import TinyConvVideoBackbone

    torch.manual_seed(0)
    bb = TinyConvVideoBackbone(width=width).double().eval()
    with torch.no_grad():
        for blk in bb.temporal:
            bn = blk[1]
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    grid = [[2 * k + t for t in range(8)] for k in range(6)]
    index = torch.tensor([*grid, [t + 7 for t in range(8)], [0, 0, 1, 1, 2, 2, 3, 3],
                          [5, 5, 5, 5, 5, 5, 5, 5]])  # fmt: skip
    feats = torch.randn(int(index.max()) + 1, width, 8, 8, dtype=torch.float64, requires_grad=True)
    tokens, cls = bb.windows_from_frame_features(feats, index)
    ref_tokens, ref_cls = _windows_reference(bb, feats, index)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cls, ref_cls, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(bb.from_frame_features(feats[index])[0], ref_tokens, rtol=1e-10,
                               atol=1e-10)  # fmt: skip
    w_t, w_c = torch.randn_like(tokens), torch.randn_like(cls)
    (g,) = torch.autograd.grad((tokens * w_t).sum() + (cls * w_c).sum(), feats)
    (g_ref,) = torch.autograd.grad((ref_tokens * w_t).sum() + (ref_cls * w_c).sum(), feats)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)


def test_windows_from_frame_features_refuses_training_mode_and_bad_shapes():
    from artlib.models.tiny import TinyConvVideoBackbone

    bb = TinyConvVideoBackbone(width=16)
    index = torch.arange(8)[None]
    with pytest.raises(RuntimeError, match="eval mode"):
        bb.windows_from_frame_features(torch.randn(8, 16, 8, 8), index)
    bb.eval()
    with pytest.raises(ValueError, match=r"feats, index: expected \(F, 16, h, w\) and \(B, T\)"):
        bb.windows_from_frame_features(torch.randn(8, 32, 8, 8), index)
    with pytest.raises(ValueError, match=r"got \(8, 16, 8, 8\) and \(8,\)"):
        bb.windows_from_frame_features(torch.randn(8, 16, 8, 8), index[0])


def _main_job_model(**flags):
    """The main job's model (synthetic preset: ART on tiny_cnn, T = 8, 64x64; ``flags`` changes
    it), random head and bank so that its probabilities differ between windows and classes."""
    from artlib.data.synthetic import CLASS_NAMES
    from artlib.engine.config import resolve
    from artlib.engine.trainer import build_model

    cfg = resolve({"preset": "synthetic", **flags})
    torch.manual_seed(0)
    names = CLASS_NAMES[:8]
    model = build_model(cfg, names).eval()
    with torch.no_grad():
        model.head.bank.S.normal_()
    dc = model.data_config
    info = {"num_frames": dc["num_frames"], "crop_size": dc["input_size"][-1], "mean": dc["mean"],
            "std": dc["std"], "num_clips": 1, "class_names": names}  # fmt: skip
    return model, info


def test_shared_frame_features_equal_the_model_on_each_window(tmp_path):
    """The main job's model: the timeline's window probabilities (each sampled frame's backbone
    features computed once) equal softmax(model(frames of the window)) with the clip API, and
    equal the per-window path; each sampled frame went through frame_features exactly once."""
    import artlib
    from artlib.api import eval_dataset
    from artlib.data import decode_frames
    from artlib.data.sampling import crop_params

    model, info = _main_job_model()
    assert info["num_frames"] == 8 and model.config["backbone"] == "tiny_cnn"
    path = long_video(tmp_path / "v.mp4", [0, 1, 2])  # 96 frames at 16 fps
    bb, seen = model.backbone, []
    real = bb.frame_features
    bb.frame_features = lambda x: seen.append(x.shape[0]) or real(x)
    res = artlib.predict_timeline(model, info, path, window=2.0, stride=0.5, batch_size=4)
    del bb.frame_features
    per = artlib.predict_timeline(model, info, path, window=2.0, stride=0.5, batch_size=4,
                                  share_frames=False)  # fmt: skip
    got = torch.tensor([w["probs"] for w in res["windows"]])
    assert len(res["windows"]) == 9 and got.std(-1).min() > 1e-3, got  # windows 0, 0.5, ... 4 s
    ds = eval_dataset([], info)
    starts = [round(w["start"] * FPS) for w in res["windows"]]
    with torch.no_grad():
        ref = torch.cat([
            model(ds.transform(decode_frames(path, [st + 2 + 4 * t for t in range(8)]),
                               crop_params(64, 64, train=False))[None]).softmax(-1)
            for st in starts
        ])  # fmt: skip
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-4)  # probs are rounded to 4 decimals
    torch.testing.assert_close(got, torch.tensor([w["probs"] for w in per["windows"]]), rtol=0,
                               atol=2e-4)  # fmt: skip
    assert sum(seen) == len({st + 2 + 4 * t for st in starts for t in range(8)}), (seen, starts)


def test_shared_frame_features_of_a_backbone_without_the_windowed_part(tmp_path):
    """The ViT backbone (tiny) declares frame_features/from_frame_features but not
    windows_from_frame_features: the timeline gathers each window's frame features for it, and
    its probabilities equal those of the whole model per window."""
    import artlib

    model, info = _main_job_model(**{"model.backbone": "tiny", "model.pretrained": "none"})
    assert not hasattr(model.backbone, "windows_from_frame_features")
    path = long_video(tmp_path / "v.mp4", [0, 1, 2])
    res = artlib.predict_timeline(model, info, path, window=2.0, stride=0.5, batch_size=4)
    per = artlib.predict_timeline(model, info, path, window=2.0, stride=0.5, batch_size=4,
                                  share_frames=False)  # fmt: skip
    got = torch.tensor([w["probs"] for w in res["windows"]])
    assert len(res["windows"]) == 9 and got.std(-1).min() > 1e-3, got
    torch.testing.assert_close(got, torch.tensor([w["probs"] for w in per["windows"]]), rtol=0,
                               atol=2e-4)  # fmt: skip


def test_timeline_skipping_nonref_frames_changes_nothing(tmp_path, monkeypatch):
    """The timeline leaves the unsampled non-reference frames undecoded: its windows are exactly
    those of the pass that decodes every frame."""
    import artlib
    import artlib.data.decode as decode

    model, info = _main_job_model()
    path = _bframe_video(tmp_path / "b.mp4", n=150)
    judged = []
    real = decode._ref_checker

    def checker(stream):
        f = real(stream)
        return lambda pkt: judged.append(f(pkt)) or judged[-1]

    monkeypatch.setattr(decode, "_ref_checker", checker)
    fast = artlib.predict_timeline(model, info, path, window=2.0, stride=0.5, batch_size=4)
    assert judged.count(False) > 0, "no frame was left undecoded"
    exact = artlib.predict_timeline(model, info, path, window=2.0, stride=0.5, batch_size=4,
                                    skip_nonref=False)  # fmt: skip
    assert len(fast["windows"]) == 10 and fast == exact, (fast["windows"][:2], exact["windows"][:2])


# ------------------------------------------------------------------------------ long video


def _close_within(gen, seconds: float) -> bool:
    """``gen.close()`` in a helper thread -> whether it returned within ``seconds``."""
    import threading

    t = threading.Thread(target=gen.close, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


@pytest.mark.parametrize("ends_with", ["end", "error"])
def test_ahead_consumer_leaving_a_full_queue_does_not_hang(ends_with):
    """The consumer stops (an error in the model, a closed generator) after the decoding thread
    has produced everything and the queue is full: the thread's last put (the end, or the
    decoding error) must not block, or closing waits for it forever."""
    import threading

    from artlib.timeline import _ahead

    produced = threading.Event()

    def items():
        yield from range(3)
        produced.set()  # from here the thread puts the end (or the error) into a full queue
        if ends_with == "error":
            raise RuntimeError("decoding failed")

    gen = _ahead(items(), depth=1)
    assert next(gen) == 0 and next(gen) == 1  # 2 waits in the queue (depth 1): it is full
    # generous bounds (the work takes milliseconds): only a hang, not a loaded machine, reaches them
    assert produced.wait(120), "the decoding thread never finished its items"
    assert _close_within(gen, 120), "closing _ahead hung on the thread's last put into a full queue"


def test_ahead_hands_over_items_and_errors_in_order():
    from artlib.timeline import _ahead

    def items():
        yield from range(5)
        raise ValueError("broken at 5")

    got = []
    with pytest.raises(ValueError, match="broken at 5"):
        for x in _ahead(items(), depth=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


@pytest.mark.slow  # with the checkpoint fixture: ~25 s on 2 idle cores
def test_timeline_recovers_concatenated_clips(synth_ckpt, long_mp4):
    """Six 2-s clips of known classes in one file: the segments name them in order, and every
    boundary is within one stride of the true one (2, 4, 6, 8, 10 s)."""
    import artlib

    model, info = artlib.load_model(synth_ckpt)
    res = artlib.predict_timeline(model, info, long_mp4, window=2.0, stride=0.5)
    segs = res["segments"]
    got = [(s["start"], s["end"], s["name"]) for s in segs]
    assert res["duration"] == pytest.approx(len(ORDER) * 2.0) and res["fps"] == FPS
    assert [s["label"] for s in segs] == ORDER, got
    for s, true in zip(segs[1:], range(2, 2 * len(ORDER), 2)):
        assert abs(s["start"] - true) <= res["stride"], (true, got)
    assert segs[0]["start"] == 0.0 and segs[-1]["end"] == res["duration"]


@pytest.mark.slow  # with the checkpoint fixture: ~25 s on 2 idle cores
def test_predict_timeline_cli(synth_ckpt, long_mp4, tmp_path):
    """--json/--csv/--plot; a broken file -> an error line, the others done, exit 1."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    out_csv, out_png = tmp_path / "s.csv", tmp_path / "t.png"
    cmd = [sys.executable, "-m", "artlib.predict", str(long_mp4), str(bad), "--checkpoint",
           str(synth_ckpt), "--timeline", "--json", "--stride", "0.5", "--csv", str(out_csv),
           "--plot", str(out_png)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 1, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[1] == {"video": str(bad), "error": lines[1]["error"]} and lines[1]["error"]
    assert [s["label"] for s in lines[0]["segments"]] == ORDER, lines[0]["segments"]
    assert len(lines[0]["windows"]) == 21 and len(lines[0]["windows"][0]["probs"]) == 8
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "video,start,end,label,name,score" and len(rows) == 1 + len(ORDER), rows
    assert (tmp_path / "t_0.png").stat().st_size > 5000  # one picture per readable video


def test_predict_timeline_bad_flags_exit_2(synth_ckpt):
    for extra, word in [(["--window", "0"], "--window"), (["--stride", "1"], "--timeline"),
                        (["--timeline", "--min-score", "2"], "--min-score")]:  # fmt: skip
        cmd = [sys.executable, "-m", "artlib.predict", "x.mp4", "--checkpoint", str(synth_ckpt)]
        r = subprocess.run(cmd + extra, capture_output=True, text=True, env=env(), timeout=120)
        assert r.returncode == 2 and word in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ------------------------------------------------------------------------------ metrics


def test_segment_iou_by_hand():
    np.testing.assert_allclose(segment_iou((0, 5), [[0, 10], [20, 30], [4, 6]]), [0.5, 0, 1 / 6])
    np.testing.assert_allclose(segment_iou((21, 31), [[20, 30]]), [9 / 11])


def test_average_precision_by_hand():
    """GT [0,10], [20,30] in video a.
    Scores 0.95 (0,5) tIoU .5; 0.9 (0,10) tIoU 1; 0.8 (21,31) tIoU 9/11.
    @0.3 and @0.5: TP, FP (its GT taken), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
      -> monotone 1, 2/3, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    @0.7: FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> AP = 2/3."""
    gt = {"a": [(0, 10), (20, 30)]}
    pred = [("a", 0, 5, 0.95), ("a", 0, 10, 0.9), ("a", 21, 31, 0.8)]
    np.testing.assert_allclose(average_precision(gt, pred, (0.3, 0.5, 0.7)), [5 / 6, 5 / 6, 2 / 3])
    # the same three in a better order: AP 1 at every threshold; an extra low-scored false
    # positive (another video) does not lower it (it comes after full recall)
    pred = [("a", 0, 10, 0.9), ("a", 21, 31, 0.8), ("a", 0, 5, 0.7), ("b", 0, 1, 0.1)]
    np.testing.assert_allclose(average_precision(gt, pred, (0.3, 0.5, 0.7)), [1, 1, 1])
    # a false positive first: precision 0, 1/2, 2/3 -> 2/3
    pred = [("b", 0, 1, 0.99), ("a", 0, 10, 0.9), ("a", 21, 31, 0.8)]
    np.testing.assert_allclose(average_precision(gt, pred, (0.5,)), [2 / 3])


def test_evaluate_segments_mean_over_gt_classes():
    """Class 0: AP 1; class 1: one of two found, first -> AP 1/2; class 2: no prediction -> 0;
    class 3 has predictions only: not counted. mAP = (1 + 1/2 + 0) / 3."""
    gt = [("v", 0, 10, 0), ("v", 10, 20, 1), ("w", 0, 5, 1), ("w", 5, 9, 2)]
    pred = [("v", 0, 10, 0, 0.9), ("v", 10, 20, 1, 0.8), ("w", 6, 8, 3, 0.7)]
    res = evaluate_segments(gt, pred, (0.5,))
    assert res["classes"] == 3 and res["videos"] == 2
    assert [c["ap"]["0.5"] for c in res["per_class"].values()] == [1.0, 0.5, 0.0]
    assert res["mAP"]["0.5"] == pytest.approx(0.5)


def test_readers(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("video,start,end,label\nv.mp4,0,2.5,3\nv.mp4,2.5,4,limb up once\n")
    assert read_segments_csv(gt, ["limb up once"]) == [("v.mp4", 0, 2.5, 3), ("v.mp4", 2.5, 4, 0)]
    gym = {"abcdefghijk": {"E_000010_000020": {
        "event": 4, "timestamps": [[10.0, 20.0]],
        "segments": {"A_0000_0001": {"stages": 1, "timestamps": [[1.0, 2.5]]},
                     "A_0001_0002": {"stages": 3, "timestamps": [[3, 4], [4, 5], [5, 6.5]]}}}}}  # fmt: skip
    (tmp_path / "gym.json").write_text(json.dumps(gym))
    (tmp_path / "el.txt").write_text(
        "abcdefghijk_E_000010_000020_A_0000_0001 7\nabcdefghijk_E_000010_000020_A_0001_0002 9\n"
    )
    assert read_finegym_segments(tmp_path / "gym.json", tmp_path / "el.txt") == [
        ("abcdefghijk", 11.0, 12.5, 7), ("abcdefghijk", 13.0, 16.5, 9)]  # fmt: skip
    assert read_finegym_segments(tmp_path / "gym.json") == [("abcdefghijk", 10.0, 20.0, 4)]


@pytest.mark.slow  # with the checkpoint fixture: ~25 s on 2 idle cores
def test_segment_metrics_cli_on_timeline(synth_ckpt, long_mp4, tmp_path):
    """The timeline of the concatenated video against its true segments: every class found at
    tIoU 0.5 (the boundaries are within a quarter of a 2-s segment)."""
    pred = tmp_path / "pred.jsonl"
    r = subprocess.run([sys.executable, "-m", "artlib.predict", str(long_mp4), "--checkpoint",
                        str(synth_ckpt), "--timeline", "--json"], capture_output=True, text=True,
                       env=env(), timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    pred.write_text(r.stdout)
    gt = tmp_path / "gt.csv"
    gt.write_text("video,start,end,label\n" + "".join(
        f"long,{2 * i},{2 * i + 2},{c}\n" for i, c in enumerate(ORDER)))  # fmt: skip
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "-m", "artlib.segment_metrics", "--gt", str(gt), "--pred",
                        str(pred), "--out", str(out)], capture_output=True, text=True, env=env(),
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["mAP"]["0.5"] == 1.0 and res["classes"] == len(ORDER), r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("mAP@0.3 "), r.stdout


@pytest.mark.slow
def test_timeline_of_a_file_that_breaks_part_way(synth_ckpt, long_mp4, monkeypatch):
    """The decoder fails after frame 99: the windows before it are kept, the damage noted."""
    import artlib
    import artlib.data.decode as decode
    from artlib.data import VideoDecodeError

    real = decode.stream_frames

    def breaking(path, want=None, **kw):
        info, frames = real(path, want, **kw)

        def gen():
            for i, rgb in frames:
                if i == 100:
                    raise VideoDecodeError(str(path), "corrupt stream after frame 99", 100)
                yield i, rgb

        return info, gen()

    monkeypatch.setattr(decode, "stream_frames", breaking)
    model, info = artlib.load_model(synth_ckpt)
    res = artlib.predict_timeline(model, info, long_mp4, window=2.0, stride=0.5)
    assert res["damage"]["frame"] == 100 and "corrupt" in res["damage"]["reason"], res["damage"]
    assert res["duration"] == pytest.approx(100 / FPS)
    assert max(w["end"] for w in res["windows"]) <= 100 / FPS + 2.0, res["windows"]
    labels = [s["label"] for s in res["segments"]]
    assert labels == ORDER[: len(labels)] and len(labels) >= 3, res["segments"]
