"""``python -m artlib.predict``: top-k names and probabilities equal the softmax of the model's
logits averaged over the clips; a broken file gets an error line and exit status 1 while the
others are predicted; tracklet pictures; baselines; misuse."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.ckpt_fixtures import CLASSES, REPO, env, make_checkpoint, write_clips


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    make_checkpoint(root / "art.pt", steps=2)
    make_checkpoint(root / "baseline.pt", baseline=True)
    write_clips(root / "clips", [1, 3, 0], broken={1})
    return root


def _videos(root):
    return [str(root / "clips" / f"clip{i}.mp4") for i in range(3)]


def _predict(capsys, *flags, rc):
    """``python -m artlib.predict FLAGS`` in this process -> (stdout, stderr)."""
    from artlib.predict import main

    capsys.readouterr()
    assert main(list(flags)) == rc
    res = capsys.readouterr()
    return res.out, res.err


def _reference(ckpt, video, num_clips):
    """Per clip: decode, the model's logits, softmax; then the mean over clips."""
    import artlib
    from artlib.data import VideoDataset

    model, info = artlib.load_model(ckpt)
    ds = VideoDataset([(video, 0)], info["num_frames"], train=False, crop_size=info["crop_size"],
                      flip=False, num_clips=num_clips)  # fmt: skip
    clips = ds[0]["video"].reshape(num_clips, info["num_frames"], 3, 32, 32)
    with torch.no_grad():
        probs = [model(clips[c : c + 1])[0].softmax(-1) for c in range(num_clips)]
    return torch.stack(probs).mean(0)


def test_json_lines_match_the_model_and_a_broken_file_is_reported(files, capsys):
    videos = _videos(files)
    out, _ = _predict(capsys, *videos, "--checkpoint", str(files / "art.pt"), "--json", "--topk",
                      "3", "--num-clips", "2", rc=1)  # fmt: skip
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [x["video"] for x in lines] == videos
    assert "error" in lines[1] and "topk" not in lines[1]
    for i in (0, 2):
        want = _reference(files / "art.pt", videos[i], num_clips=2)
        top = lines[i]["topk"]
        assert [t["label"] for t in top] == want.topk(3).indices.tolist()
        assert [t["name"] for t in top] == [CLASSES[t["label"]] for t in top]
        assert [t["prob"] for t in top] == pytest.approx(want.topk(3).values.tolist(), abs=1e-5)


def test_text_output_tracklets_and_baseline(files, tmp_path, capsys):
    videos = _videos(files)
    png = tmp_path / "tracklets.png"
    out, err = _predict(capsys, videos[0], videos[2], "--checkpoint", str(files / "art.pt"),
                        "--topk", "2", "--tracklets", str(png), rc=0)  # fmt: skip
    out = out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith(f"{videos[0]}: ") and out[0].count(", ") == 1
    assert png.stat().st_size > 5_000 and "2 tracklets x 4 frames" in err
    out, err = _predict(capsys, videos[0], "--checkpoint", str(files / "baseline.pt"), "--json",
                        "--tracklets", str(tmp_path / "b.png"), rc=0)  # fmt: skip
    assert len(json.loads(out)["topk"]) == 4  # --topk 5 of 4 classes
    assert "no tracklets" in err and not (tmp_path / "b.png").exists()


def test_misuse_exits_2_before_loading(files, tmp_path, capsys):
    from artlib.predict import main

    video = _videos(files)[0]
    for flags, message in (
        ([video, "--checkpoint", str(tmp_path / "no.pt")], "--checkpoint: no file or model folder at"),
        ([video, "--checkpoint", str(files / "art.pt"), "--topk", "0"], "--topk must be >= 1"),
        ([video, "--checkpoint", str(files / "art.pt"), "--tracklets", "/no/such/dir/t.png"],
         "--tracklets: no folder"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(flags)
        assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]
    res = subprocess.run(  # as if matplotlib were not installed: answered before torch loads
        [sys.executable, "-c", "import runpy, sys; sys.modules['matplotlib'] = None; "
         f"sys.argv = ['predict', {video!r}, '--checkpoint', {str(files / 'art.pt')!r}, "
         "'--tracklets', 't.png']; runpy.run_module('artlib.predict', run_name='__main__'); "],
        env=env(), capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 2 and not res.stdout
    assert "pip install matplotlib" in res.stderr.strip().splitlines()[-1]


def test_visualize_tracklets_example(files, tmp_path, capsys):
    """examples/visualize_tracklets.py: a missing file is one line and exit 2; else the PNG."""
    import runpy

    main = runpy.run_path(str(REPO / "examples" / "visualize_tracklets.py"))["main"]
    video, ckpt = _videos(files)[0], str(files / "art.pt")
    for flags, message in (
        (["--checkpoint", str(tmp_path / "no.pt"), "--video", video], "--checkpoint: no file"),
        (["--checkpoint", ckpt, "--video", str(tmp_path / "no.mp4")], "--video: no file"),
    ):
        with pytest.raises(SystemExit) as e:
            main(flags)
        assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]
    broken = _videos(files)[1]
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", ckpt, "--video", broken, "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "cannot decode" in capsys.readouterr().err.splitlines()[-1]
    assert main(["--checkpoint", ckpt, "--video", video, "--out", str(tmp_path / "t.png")]) == 0
    assert "2 tracklets x 4 frames, predicted '" in capsys.readouterr().out
    assert (tmp_path / "t.png").stat().st_size > 5_000
