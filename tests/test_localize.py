"""evaluate --localization: the synthetic set's boxes mapped onto the model's token grid land on the
limb in the model's input, and the command prints and writes the per-layer figures."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from artlib.data import VideoDataset, make_finegrained_set, read_generic_list  # noqa: E402
from artlib.localize import video_boxes  # noqa: E402
from tests.ckpt_fixtures import make_checkpoint, write_clips  # noqa: E402


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc")
    return make_finegrained_set(
        root, num_classes=4, train_per_class=1, val_per_class=2, num_frames=16, size=(64, 64),
        distractors=1,
    )  # fmt: skip


def test_boxes_on_the_token_grid_cover_the_white_squares_of_the_input(synthetic):
    """Evaluation's frames and crop (64 px frames resized to a 48 px input, a 6x6 grid of 8 px
    cells): in every sampled frame the whitest cell of the input (a limb's or a distractor's
    white core) is a cell the limb's or a distractor's box covers, and the limb's cells hold
    white pixels."""
    items, _ = read_generic_list(synthetic.val_list)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    ds = VideoDataset(items, num_frames=4, train=False, crop_size=48, mean=mean, std=std)
    for i in range(len(ds)):
        video = ds[i]["video"] * 0.25 + 0.5  # (T, 3, 48, 48) in 0..1
        limb, dis, body = video_boxes(ds, i, 4, 6)
        assert limb.shape == body.shape == (4, 36) and dis.shape == (4, 1, 36)
        white = (video.min(1).values > 0.9).float()  # (T, 48, 48)
        cells = white.view(4, 6, 8, 6, 8).sum((2, 4)).view(4, 36)  # white pixels per cell
        for t in range(4):
            best = int(cells[t].argmax())
            covered = (limb[t] > 0) | (dis[t] > 0).any(0)
            assert covered[best], (items[i].path, t, best, limb[t].nonzero().flatten().tolist())
            assert cells[t][limb[t] > 0].sum() >= 4, (items[i].path, t)
            assert body[t].sum() > limb[t].sum(), (items[i].path, t)  # the body is the larger


def test_evaluate_localization_prints_and_writes_every_layer(synthetic, tmp_path, capsys):
    """A tiny checkpoint (K = 2, one decoder layer) on sidecar videos: per-layer lines, a JSON with
    fractions in [0, 1] and chance levels that match the boxes, Top-1 equal to evaluate's (same
    centre clip), the FINAL line still last. Without sidecars: the health figures only."""
    from artlib.evaluate import main

    ckpt = tmp_path / "ckpt.pt"
    make_checkpoint(ckpt)
    # the tiny checkpoint reads 32 px, 4 frames: a set of that size
    syn = make_finegrained_set(
        tmp_path / "set", num_classes=4, train_per_class=1, val_per_class=2, num_frames=8,
        size=(32, 32), distractors=1,
    )  # fmt: skip
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(ckpt), "--val-list", syn.val_list, "--out", str(out)]
    assert main([*argv, "--localization", "--workers", "0", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("FINAL eval"), lines[-3:]
    assert any(ln.startswith("localization layer 1:") for ln in lines), lines
    assert any(ln.startswith("LOCALIZATION videos=8") for ln in lines), lines
    rep = json.loads((out / "localization.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert rep["with_boxes"] and rep["videos"] == 8 and len(rep["layers"]) == 1
    assert rep["top1"] == pytest.approx(metrics["top1"])
    e = rep["layers"][0]
    assert len(e["pointing"]) == 2 and len(e["entropy"]) == 2
    for key in ("pointing", "mass", "distractor_hits", "entropy"):
        assert all(0 <= v <= 1 for v in e[key]), (key, e[key])
    assert e["pointing_best"] == max(e["pointing"])
    assert len(e["body_pointing"]) == 2 and e["body_pointing_chance"] > e["pointing_chance"]
    # a 16 px limb box (0.16 x 32 = 5.1 px) on 8 px cells touches 1-4 of 16 cells: chance 1/16..1/4
    assert 1 / 16 <= e["pointing_chance"] <= 4 / 16
    assert 0 < e["mass_chance"] < e["pointing_chance"]

    plain = write_clips(tmp_path / "plain", [0, 1, 2, 3])
    assert main([*argv[:2], "--val-list", str(plain), "--out", str(tmp_path / "e2"),
                 "--localization", "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "no box sidecars: health only" in text and "localization layer" not in text
    rep = json.loads((tmp_path / "e2" / "localization.json").read_text())
    assert not rep["with_boxes"] and "pointing" not in rep["layers"][0]
    assert (
        np.isfinite(rep["tracklet_cosine"])
        and torch.tensor(rep["layers"][0]["entropy"]).le(1).all()
    )


def test_tracklet_picture_at_native_resolution_with_health(tmp_path):
    """draw_tracklets with the file's path: the frames of a 48x64 video at that size, the crop the
    model saw (the centre 48x48 square), the frame times (index / fps), the predicted class's
    probability as predict_proba gives it, and the video's health figures in [0, 1]."""
    pytest.importorskip("matplotlib")
    from artlib.api import load_model, load_video, predict_proba
    from artlib.data._write import write_video
    from artlib.data.synthetic import render_clip
    from artlib.visualize import _native_frames, draw_tracklets

    ckpt = tmp_path / "ckpt.pt"
    make_checkpoint(ckpt)
    model, info = load_model(ckpt)
    path = tmp_path / "wide.mp4"
    write_video(str(path), render_clip(2, np.random.default_rng(3), 16, (48, 64))[0], fps=8)
    frames, times, crop = _native_frames(path, info)
    assert frames.shape == (4, 48, 64, 3) and crop == (0, 8, 48, 48)
    assert times == [2 / 8, 6 / 8, 10 / 8, 14 / 8]  # segment centres of 16 frames in 4, at 8 fps
    video = load_video(path, info, num_clips=1)
    done = draw_tracklets(model, video, info, tmp_path / "t.png", path=path)
    probs = predict_proba(model, video)
    assert done["label"] == int(probs.argmax()) and done["prob"] == pytest.approx(
        float(probs.max())
    )
    h = done["health"]
    assert len(h["entropy"]) == 2 and all(0 <= e <= 1 for e in h["entropy"]) and h["tokens"] == 16
    assert -1 <= h["map_cosine"] <= 1 and -1 <= h["tracklet_cosine"] <= 1
    assert (tmp_path / "t.png").stat().st_size > 5_000
