"""python -m artlib.extract: features equal the model's forward, resume after a kill, shards."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("safetensors")

from ckpt_fixtures import env, make_checkpoint, write_clips  # noqa: E402
from timeline_fixtures import long_video  # noqa: E402


@pytest.fixture(scope="module")
def art_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ex") / "art.pt"
    with warnings.catch_warnings():  # no optimizer step before the scheduler's: expected here
        warnings.simplefilter("ignore", UserWarning)
        make_checkpoint(path, steps=0)  # no training step: the forward is what is compared
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exclips")
    write_clips(folder, [0, 1, 2, 3, 0, 1, 2, 3], size=32, frames=16)
    return sorted(str(p) for p in folder.glob("clip*.mp4"))


def _reference(model, video):
    """The ART head's steps written out: global token, tracklet embeddings (Eq. 9), logits."""
    with torch.no_grad():
        tokens, cls = model.backbone(video)
        head = model.head
        _, s_topk = head.select_semantics(cls)
        r = head.rssa(head.token_proj(tokens), s_topk)
        agg = head.aggregate(r, s_topk)
        return cls, agg, model(video)


def test_features_equal_model_forward(art_ckpt, clips, tmp_path):
    import artlib
    from artlib.api import eval_dataset
    from artlib.data import decode_frames
    from artlib.data.sampling import crop_params
    from artlib.extract import extract_features

    model, info = artlib.load_model(art_ckpt)
    feats, meta = extract_features(model, info, clips[0], num_clips=2)
    cls, agg, logits = _reference(model, artlib.load_video(clips[0], info, num_clips=2))
    assert feats["tracklets"].shape == agg.shape and agg.dim() == 3, feats["tracklets"].shape
    torch.testing.assert_close(feats["global"], cls)
    torch.testing.assert_close(feats["tracklets"], agg)
    torch.testing.assert_close(feats["logits"], logits)
    assert meta["mode"] == "clips" and feats["times"].shape == (2, 2)

    # timeline windows: the same on the frames each window samples, decoded independently
    path = long_video(tmp_path / "l.mp4", [0, 1])  # 64 frames at 16 fps, 64x64
    feats, meta = extract_features(model, info, str(path), timeline=True, window=1.0, stride=0.5)
    from artlib.timeline import plan_windows

    plan = plan_windows(64, 16, 1.0, 0.5, info["num_frames"])
    ds = eval_dataset([], info)
    crop = crop_params(64, 64, train=False)
    video = torch.stack([
        ds.transform(decode_frames(path, [plan.start(k) + o for o in plan.offsets]), crop)
        for k in range(plan.count)
    ])  # fmt: skip
    cls, agg, logits = _reference(model, video)
    assert feats["logits"].shape[0] == plan.count == 7
    torch.testing.assert_close(feats["global"], cls)
    torch.testing.assert_close(feats["tracklets"], agg)
    torch.testing.assert_close(feats["logits"], logits)
    torch.testing.assert_close(
        feats["times"],
        torch.tensor([plan.times(k) for k in range(plan.count)], dtype=torch.float64),
    )


def _cmd(ckpt, out, videos):
    return [sys.executable, "-m", "artlib.extract", *videos, "--checkpoint", str(ckpt),
            "--out", str(out)]  # fmt: skip


# ``python -m artlib.extract`` that stops itself (SIGSTOP) just before it renames its second
# feature file into place: the test kills it there, one file finished and the next one written
# under its temporary name, wherever the machine's load puts the two processes (a kill timed by
# polling for the first file raced the remaining 23 videos, 40 ms each)
_EXTRACT_STOPPING_BEFORE_THE_SECOND_FILE = """
import os, runpy, signal
real, renamed = os.replace, []
def replace(src, dst, *a, **k):
    if str(dst).endswith(".safetensors"):
        if renamed:
            os.kill(os.getpid(), signal.SIGSTOP)
        renamed.append(dst)
    return real(src, dst, *a, **k)
os.replace = replace
runpy.run_module("artlib.extract", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_extract_resumes_after_kill(art_ckpt, clips, tmp_path):
    """Killed after its first file, the second one half-done: a second run writes only the rest,
    the first untouched."""
    out = tmp_path / "feats"
    videos = clips * 3  # the same files under other names: 24 videos
    links = []
    for i, v in enumerate(videos):
        link = tmp_path / f"v{i:02d}.mp4"
        os.symlink(v, link)
        links.append(str(link))
    cmd = _cmd(art_ckpt, out, links)
    stopping = [sys.executable, "-c", _EXTRACT_STOPPING_BEFORE_THE_SECOND_FILE, *cmd[3:]]
    proc = subprocess.Popen(stopping, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline, stopped = time.monotonic() + 300, False
    while not stopped and time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid and not os.WIFSTOPPED(status):  # it ended: let Popen report how
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        stopped = bool(pid)
        time.sleep(0.01)
    proc.kill()
    stdout, stderr = proc.communicate(timeout=60)
    assert stopped, (
        f"extract did not reach its second file (exit status {proc.returncode})",
        stdout[-2000:], stderr[-2000:],
    )  # fmt: skip
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    assert len(first) == 1, (first, stdout[-2000:])
    assert len(list(out.glob(".*.tmp-*"))) == 1  # the second file, written, never renamed
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{len(links) - len(first)} written, {len(first)} already done" in r.stderr, r.stderr
    files = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    assert len(files) == len(links) and all(files[n] == t for n, t in first.items())
    with open(out / "index.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["video"] for r in rows) == sorted(links)


@pytest.mark.slow
def test_extract_shards_and_reports_bad_videos(art_ckpt, clips, tmp_path):
    """RANK/WORLD_SIZE split the list; a broken file goes to the rank's report, the rest go on."""
    from safetensors import safe_open

    from artlib.extract import feature_file

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 50)
    videos = [clips[0], str(bad), clips[1], clips[2]]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{v} 0\n" for v in videos))
    out = tmp_path / "feats"
    codes = {}
    for rank in (0, 1):
        e = dict(env(), RANK=str(rank), WORLD_SIZE="2")
        cmd = [sys.executable, "-m", "artlib.extract", "--list", str(lst), "--checkpoint",
               str(art_ckpt), "--out", str(out)]  # fmt: skip
        r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)
        codes[rank] = (r.returncode, r.stderr)
    assert codes[0][0] == 0 and codes[1][0] == 1, codes  # rank 1 had videos 1 and 3: bad, clip2
    with open(out / "errors.rank1.csv") as fh:
        errs = list(csv.DictReader(fh))
    assert [e["video"] for e in errs] == [str(bad)], errs
    for v in (clips[0], clips[1], clips[2]):
        with safe_open(str(feature_file(out, v)), "pt") as fh:
            assert fh.metadata()["video"] == v
    with open(out / "index.csv") as fh:
        assert sorted(r["video"] for r in csv.DictReader(fh)) == sorted(clips[:3])
