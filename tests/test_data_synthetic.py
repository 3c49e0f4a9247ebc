"""The synthetic fine-grained set: classes differ only by a brief local motion; files are cached per
configuration and written atomically."""

import os

import numpy as np
import pytest

pytest.importorskip("av")

from artlib.data import (  # noqa: E402
    CLASS_NAMES,
    VideoDataset,
    make_finegrained_set,
    make_loader,
    read_generic_list,
    video_info,
)
from artlib.data.synthetic import _limb_offset, render_clip  # noqa: E402


def test_classes_differ_only_locally_and_briefly():
    """Same random draws, different classes: the videos differ only in a small region (the limb)
    and only inside the motion window."""
    F, size = 32, (64, 64)
    clips = {}
    for label in range(8):
        frames, start = render_clip(label, np.random.default_rng(42), F, size)
        clips[label] = frames.astype(np.int16)
    window = range(start, start + F // 2)
    for a in range(8):
        for b in range(a + 1, 8):
            diff = np.abs(clips[a] - clips[b]).max(-1) > 8  # (F, H, W)
            assert diff.any(), (a, b)
            outside = [t for t in range(F) if t not in window]
            assert not diff[outside].any(), (a, b)  # identical outside the window
            # a small region at any time: at most two limb footprints, 2 x 11² px of 64² (< 7%)
            assert diff.mean(axis=(1, 2)).max() < 0.07, (a, b)
    # the global motion is the same: the body's pixels don't depend on the class
    assert np.array_equal(clips[0][0], clips[5][0])


def test_distractors_are_look_alikes_that_do_not_depend_on_the_class():
    """Distractors add a few limb-like squares: the rest of the video is unchanged, the real limb is
    drawn over them, and the classes still differ only inside their window."""
    F, size = 32, (64, 64)
    plain, start = render_clip(0, np.random.default_rng(7), F, size)
    busy, start2 = render_clip(0, np.random.default_rng(7), F, size, distractors=2)
    assert start2 == start
    changed = np.abs(plain.astype(int) - busy).max(-1) > 8  # (F, H, W)
    assert changed.any() and changed.mean(axis=(1, 2)).max() < 0.12  # two squares of 11² px
    white = (busy.min(-1) > 240).mean(axis=(1, 2))  # limb cores: more white in every frame
    assert (white > (plain.min(-1) > 240).mean(axis=(1, 2))).all()
    other, _ = render_clip(6, np.random.default_rng(7), F, size, distractors=2)
    diff = np.abs(other.astype(int) - busy).max(-1) > 8
    outside = [t for t in range(F) if not start <= t < start + F // 2]
    assert diff.any() and not diff[outside].any()


def test_distractor_amplitude_widens_their_motion():
    """distractor_amplitude scales how far the look-alikes move: the area they sweep over the video
    grows with it (0: they stand still), and the rest of the video stays the same."""
    F, size = 32, (64, 64)
    plain, _ = render_clip(3, np.random.default_rng(11), F, size)
    swept = []
    for amp in (0.0, 0.5, 1.0):
        busy, _ = render_clip(3, np.random.default_rng(11), F, size, 2, distractor_amplitude=amp)
        swept.append((np.abs(plain.astype(int) - busy).max(-1) > 8).any(0).sum())
    assert swept[0] < swept[1] < swept[2], swept


def test_pairs_that_need_time():
    """'up once' and 'up twice' agree at the start of the window; the twists visit the same places in
    opposite orders."""
    F = 32
    once, start = render_clip(0, np.random.default_rng(1), F, (64, 64))
    twice, _ = render_clip(4, np.random.default_rng(1), F, (64, 64))
    w = F // 2
    q = start + w // 8  # early in the first quarter: both are on their way up
    assert np.abs(once[q].astype(int) - twice[q].astype(int)).max() <= 8 * 4
    mid = start + w // 2 - 1  # the 2nd quarter's end: 'twice' is back, 'once' is still up
    assert np.abs(once[mid].astype(int) - twice[mid].astype(int)).max() > 60
    # the turns: the limb is where cw puts it at phase u when ccw is at phase 1 - u, and a quarter
    # turn in they are on opposite sides
    for u in np.linspace(0, 1, 9):
        cw = _limb_offset("twist", (-1, 0), u, 10.0)
        ccw = _limb_offset("twist", (1, 0), 1 - u, 10.0)
        assert cw == pytest.approx(ccw)
    assert _limb_offset("twist", (-1, 0), 0.25, 10.0)[0] == pytest.approx(-5.0)
    assert _limb_offset("twist", (1, 0), 0.25, 10.0)[0] == pytest.approx(5.0)


def test_make_set_cached_and_atomic(tmp_path):
    kw = dict(num_classes=3, train_per_class=2, val_per_class=1, num_frames=8, size=(32, 48))
    s = make_finegrained_set(tmp_path, **kw)
    assert s.class_names == CLASS_NAMES[:3]
    train, names = read_generic_list(s.train_list)
    val, _ = read_generic_list(s.val_list)
    assert names is None and len(train) == 6 and len(val) == 3
    assert sorted(y for _, y in train) == [0, 0, 1, 1, 2, 2]
    info = video_info(train[0].path)
    assert (info.num_frames, info.height, info.width, info.codec) == (8, 32, 48, "h264")
    mtime = os.path.getmtime(train[0].path)
    again = make_finegrained_set(tmp_path, **kw)  # reused, not rewritten
    assert again == s and os.path.getmtime(train[0].path) == mtime
    other = make_finegrained_set(tmp_path, **{**kw, "seed": 1})
    assert other.root != s.root
    # an interrupted generation: a leftover temporary folder of a dead process, and a final folder
    # without its completion marker -> both are redone
    os.remove(os.path.join(other.root, "config.json"))
    leftover = os.path.join(tmp_path, f".tmp-{os.path.basename(other.root)}-999999999")
    os.makedirs(leftover)
    redone = make_finegrained_set(tmp_path, **{**kw, "seed": 1})
    assert os.path.exists(os.path.join(redone.root, "config.json"))
    assert not os.path.exists(leftover)
    assert sorted(n for n in os.listdir(tmp_path) if not n.endswith(".lock")) == sorted(
        [os.path.basename(s.root), os.path.basename(other.root)]
    )
    with pytest.raises(ValueError, match="num_classes: expected 2..12, got 13"):
        make_finegrained_set(tmp_path, num_classes=13)
    with pytest.raises(ValueError, match="distractors: expected >= 0, got -1"):
        make_finegrained_set(tmp_path, distractors=-1)
    with pytest.raises(ValueError, match="distractor_amplitude: expected 0..1, got 1.5"):
        make_finegrained_set(tmp_path, distractors=1, distractor_amplitude=1.5)
    busy = make_finegrained_set(tmp_path, **kw, distractors=1)
    assert busy.root != s.root and len(read_generic_list(busy.train_list)[0]) == 6
    wide = make_finegrained_set(tmp_path, **kw, distractors=1, distractor_amplitude=1.0)
    assert wide.root not in (s.root, busy.root)


def test_make_set_keeps_a_copy_another_process_finished_first(tmp_path, monkeypatch):
    """Parallel runs (synthetic_evidence --jobs) generate the same set at once: the one that
    finishes second must not delete the first one's copy, which that run is already reading."""
    kw = dict(num_classes=2, train_per_class=1, val_per_class=1, num_frames=8, size=(32, 32))
    first = make_finegrained_set(tmp_path, **kw)
    inode = os.stat(first.train_list).st_ino
    real_exists, missed = os.path.exists, []

    def exists(path):  # the entry check misses the copy, as if it appeared just after
        if str(path).endswith("config.json") and not missed:
            missed.append(path)
            return False
        return real_exists(path)

    monkeypatch.setattr(os.path, "exists", exists)
    second = make_finegrained_set(tmp_path, **kw)
    monkeypatch.undo()
    assert missed and second == first
    assert os.stat(first.train_list).st_ino == inode  # the first copy is still the one in place
    left = [n for n in os.listdir(tmp_path) if not n.endswith(".lock")]
    assert left == [os.path.basename(first.root)]  # and no temporary left


def test_vp9_set_loads(tmp_path):
    s = make_finegrained_set(
        tmp_path, num_classes=2, train_per_class=2, val_per_class=1, num_frames=8, codec="vp9"
    )
    items, _ = read_generic_list(s.train_list)
    assert items[0].path.endswith(".webm")
    loader = make_loader(VideoDataset(items, 4, train=True, crop_size=32), batch_size=2, train=True)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["video"].shape == (2, 4, 3, 32, 32)
    assert loader.stats["failed"] == 0


def _centres_in(box, h, w, shrink=0.0):
    """(H, W) bool: pixels whose centre lies inside box (x0, y0, x1, y1) shrunk by ``shrink``."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    x0, y0, x1, y1 = box
    return (xx > x0 + shrink) & (xx < x1 - shrink) & (yy > y0 + shrink) & (yy < y1 - shrink)


def test_boxes_match_the_rendered_limb_and_distractors():
    """The boxes returned with the frames sit on what was drawn: inside the limb's box its white core
    (every frame), its black rim just inside the edge; the pixels where two classes differ (the
    limb's own motion) all lie inside the two videos' limb boxes; a distractor's box has its white
    core wherever the body and the limb do not cover it."""
    F, (h, w) = 32, (64, 64)
    half, rim = 0.08 * 64, max(1.0, 0.08 * 64 / 3)
    clips = {}
    for label in (0, 3, 6):
        frames, _, boxes = render_clip(label, np.random.default_rng(5), F, (h, w), 2, 0.5, True)
        assert boxes["limb"].shape == (F, 4) and boxes["distractors"].shape == (2, F, 4)
        assert np.allclose(boxes["limb"][:, 2] - boxes["limb"][:, 0], 2 * half)  # never clipped
        clips[label] = frames.astype(int), boxes
        for t in range(F):
            core = _centres_in(boxes["limb"][t], h, w, shrink=rim + 1)
            assert core.sum() >= 9, (label, t, boxes["limb"][t])
            assert frames[t][core].min() >= 245, (label, t, boxes["limb"][t])
            ring = _centres_in(boxes["limb"][t], h, w, 0.2) & ~_centres_in(
                boxes["limb"][t], h, w, rim - 0.2
            )
            assert frames[t][ring].max(-1).mean() < 60, (label, t)  # the black rim
            for d in range(2):
                dcore = _centres_in(boxes["distractors"][d, t], h, w, rim + 1)
                free = dcore & ~_centres_in(boxes["limb"][t], h, w, -1)
                free &= ~_centres_in(boxes["body"][t], h, w, -1)
                if free.any():
                    assert frames[t][free].min() >= 245, (label, t, d)
    for a, b in ((0, 3), (0, 6), (3, 6)):
        (fa, ba), (fb, bb) = clips[a], clips[b]
        for t in range(F):
            moved = np.abs(fa[t] - fb[t]).max(-1) > 8
            inside = _centres_in(ba["limb"][t], h, w, -0.5) | _centres_in(bb["limb"][t], h, w, -0.5)
            assert not (moved & ~inside).any(), (a, b, t, np.argwhere(moved & ~inside)[:3])
    # without return_boxes: the same frames, the old two-value return
    frames, start = render_clip(6, np.random.default_rng(5), F, (h, w), 2)
    assert np.array_equal(frames, clips[6][0])


def test_sidecars_are_written_beside_every_video(tmp_path):
    """make_finegrained_set writes <video>.boxes.json for each video; read_boxes gives the frame's
    boxes, and the decoded file shows the limb's white core inside the limb box of each frame."""
    from artlib.data.decode import decode_clip
    from artlib.data.synthetic import box_sidecar_path, read_boxes

    syn = make_finegrained_set(
        tmp_path, num_classes=2, train_per_class=1, val_per_class=1, num_frames=8, size=(64, 64),
        distractors=1,
    )  # fmt: skip
    items, _ = read_generic_list(syn.val_list)
    for it in items:
        assert os.path.isfile(box_sidecar_path(it.path)), it.path
        boxes = read_boxes(it.path)
        assert boxes["size"] == (64, 64)
        assert boxes["limb"].shape == (8, 4) and boxes["distractors"].shape == (1, 8, 4)
        frames = decode_clip(it.path, lambda info: np.arange(8))[0].numpy()  # (8, H, W, 3)
        for t in range(8):
            core = _centres_in(boxes["limb"][t], 64, 64, shrink=2.7)
            assert frames[t][core].mean() > 200, (it.path, t)
    assert read_boxes(tmp_path / "no_such_video.mp4") is None
