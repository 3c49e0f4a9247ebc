"""Exact evaluation: ``python -m artlib.evaluate`` on 1, 2 and 3 CPU ranks (gloo, torchrun) gives
the same numbers as a per-clip reference, a broken video is skipped and never counted, a rank whose
whole share is unreadable ends every rank with the failure message (no hang), and the training
loop's per-step decisions are taken together."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.ckpt_fixtures import CLASSES, REPO, env, make_checkpoint, write_clips

LABELS = [0, 1, 2, 3, 0, 1, 2]  # 7 clips, clip4 broken


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ckpt = root / "model.pt"
    make_checkpoint(ckpt, steps=2)
    return root, ckpt, write_clips(root / "clips", LABELS, broken={4})


def _evaluate(ranks, ckpt, val_list, out, *extra, timeout=180):
    flags = ["--checkpoint", str(ckpt), "--val-list", str(val_list), "--out", str(out)]
    flags += ["--batch-size", "2", "--workers", "0", "--no-progress", *extra]
    if ranks == 1:
        cmd = [sys.executable, "-m", "artlib.evaluate", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={ranks}", "-m", "artlib.evaluate", *flags]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _reference(ckpt, val_list):
    """Top-1 / Top-5 / mean class accuracy from each readable clip alone, in this process."""
    import artlib
    from artlib.data import VideoDecodeError, read_generic_list

    model, info = artlib.load_model(ckpt)
    hits1, hits5, per_class = 0, 0, {}
    for item in read_generic_list(val_list)[0]:
        try:
            clips = artlib.load_video(item.path, info)
        except VideoDecodeError:
            continue
        with torch.no_grad():
            logits = model(clips)[0]
        top = logits.topk(min(5, len(CLASSES))).indices.tolist()
        hits1 += top[0] == item.label
        hits5 += item.label in top
        per_class.setdefault(item.label, []).append(top[0] == item.label)
    n = sum(len(v) for v in per_class.values())
    mean = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    return {"top1": hits1 / n, "top5": hits5 / n, "mean_class_acc": mean, "count": n}


@pytest.mark.slow
def test_identical_metrics_on_1_2_and_3_ranks(data):
    root, ckpt, val_list = data
    got, finals = {}, {}
    for ranks in (1, 2, 3):
        res = _evaluate(
            ranks, ckpt, val_list, root / f"out{ranks}", "--max-failure-fraction", "0.5"
        )
        assert res.returncode == 0, res.stderr[-3000:]
        finals[ranks] = res.stdout.strip().splitlines()[-1]
        got[ranks] = json.loads((root / f"out{ranks}" / "metrics.json").read_text())
        assert got[ranks]["processes"] == ranks
    keys = ("top1", "top5", "mean_class_acc", "count", "skipped", "skipped_files")
    for ranks in (2, 3):
        assert {k: got[ranks][k] for k in keys} == {k: got[1][k] for k in keys}
        assert finals[ranks] == finals[1]
    assert got[1]["count"] == 6 and got[1]["skipped"] == 1
    assert list(got[1]["skipped_files"]) == [str(val_list.parent / "clip4.mp4")]
    assert finals[1].startswith("FINAL eval top1=") and finals[1].endswith("count=6 skipped=1")
    ref = _reference(ckpt, val_list)
    assert {k: got[1][k] for k in ref} == pytest.approx(ref)
    rows = (root / "out1" / "per_class.csv").read_text().splitlines()
    assert rows[0] == "label,name,count,correct,accuracy" and len(rows) == 5
    assert [int(r.split(",")[2]) for r in rows[1:]] == [1, 2, 2, 1]  # clip4 (label 0) skipped
    assert (root / "out1" / "confusion.png").stat().st_size > 0


@pytest.mark.slow
def test_a_rank_with_only_broken_videos_stops_every_rank(data, tmp_path):
    """Rank 1 takes clips 1 and 3 (ranks shard r, r + 2, ...): both broken. Every rank stops with
    the same message naming the files, within the timeout."""
    _, ckpt, _ = data
    val_list = write_clips(tmp_path / "clips", [0, 1, 2, 3], broken={1, 3})
    res = _evaluate(2, ckpt, val_list, tmp_path / "out", "--max-failure-fraction", "0.25")
    assert res.returncode != 0
    assert "2 of the 4 videos of the evaluation set failed" in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("Failed files:") == 1  # said once, for all ranks
    for name in ("clip1.mp4", "clip3.mp4"):
        assert str(tmp_path / "clips" / name) in res.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_misuse_exits_2_with_one_line(data, tmp_path, capsys):
    from artlib.evaluate import main

    _, ckpt, val_list = data
    for flags, message in (
        (["--checkpoint", str(tmp_path / "none.pt")], "--checkpoint: no file or model folder at"),
        (["--checkpoint", str(ckpt), "--val-list", str(tmp_path / "x")], "--val-list: no file"),
        (["--checkpoint", str(ckpt), "--num-clips", "0"], "--num-clips must be >= 1"),
        (["--checkpoint", str(ckpt), "--num-crops", "2"], "invalid choice"),
        (["--checkpoint", str(ckpt), "--device", "tpu"], "--device must be auto, cpu or cuda"),
    ):
        with pytest.raises(SystemExit) as e:
            main(flags)
        assert e.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    bad = tmp_path / "labels.txt"
    bad.write_text(f"{val_list.parent / 'clip0.mp4'} 7\n")
    assert main(["--checkpoint", str(ckpt), "--val-list", str(bad), "--out", str(tmp_path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "labels [7] are outside the checkpoint's 4 classes" in last


# ------------------------------------------------------------ the training loop's decisions
class _FakeLoader:
    """Yields the given batches; ``fail_at``: after that many batches, ``failed`` videos of this
    epoch have failed (as VideoLoader counts them)."""

    def __init__(self, batches, per_rank, fail_at=None, failed=0, files=None):
        self.batches, self.sampler = batches, range(per_rank)
        self.fail_at, self.failed = fail_at, failed
        self.stats, self.failures, self.max_failure_fraction = {"epoch_failed": 0}, {}, 0.5
        self.files, self.epoch = files or {}, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, b in enumerate(self.batches):
            if self.fail_at is not None and i >= self.fail_at:
                self.stats["epoch_failed"] = self.failed
                self.failures.update(self.files)
            yield b


def _agreed_worker(rank, init, results):
    import torch.distributed as dist

    from artlib.data import TooManyFailures
    from artlib.engine.evaluation import agreed_batches

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    batch = {"video": torch.zeros(1)}
    # one rank has a batch fewer (its loader dropped an empty one): both run 2 steps
    loader = _FakeLoader([batch] * (3 if rank == 0 else 2), per_rank=8)
    steps = sum(1 for _ in agreed_batches(loader, 0.5))
    # rank 1 exceeds the failure budget at its second batch: both ranks stop there, same message
    files = {f"/data/bad{rank}.mp4": "corrupt"}
    loader = _FakeLoader([batch] * 4, 4, fail_at=1 if rank == 1 else None, failed=2, files=files)
    seen, message = 0, None
    try:
        for _ in agreed_batches(loader, 0.2):
            seen += 1
    except TooManyFailures as e:
        message = str(e)
    results[rank] = (steps, seen, message, loader.max_failure_fraction)
    dist.destroy_process_group()


def test_agreed_batches_two_ranks(tmp_path):
    import time

    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    ctx = mp.start_processes(
        _agreed_worker, args=(f"file://{tmp_path}/store", results), nprocs=2, join=False
    )
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=2):  # a hang fails the test instead of blocking it
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("agreed_batches: the ranks did not finish together")
    (s0, seen0, m0, f0), (s1, seen1, m1, f1) = results[0], results[1]
    assert s0 == s1 == 2
    assert seen0 == seen1 == 1 and m0 == m1 and m0 is not None
    assert "2 of the 8 videos of epoch 0 failed" in m0 and "/data/bad1.mp4: corrupt" in m0
    assert f0 == f1 == 0.5  # the loaders' own limit is restored


@pytest.mark.slow
def test_ddp_training_stops_every_rank_on_bad_data(tmp_path):
    """2 CPU ranks train on 8 clips; the 2 broken ones are both in rank 1's share (seed 0 puts
    clips 4, 6, 0, 7 there). The failure budget (0.2 of the epoch's 8 videos) is decided over both
    ranks: both stop at the same step with the same message naming the files, rank 0 included,
    instead of rank 0 waiting in the gradient all-reduce for a rank that has left."""
    train = write_clips(tmp_path / "clips", [0, 1, 2, 3, 0, 1, 2, 3], broken={4, 6})
    val = tmp_path / "val.txt"
    val.write_text("clip0.mp4 0\nclip1.mp4 1\n")
    flags = [
        "--data-root", str(train.parent), "--train-list", str(train), "--val-list", str(val),
        "--backbone", "tiny_cnn", "--pretrained", "none", "--text-model", "random",
        "--num-frames", "4", "--crop-size", "32", "--dim", "32", "--heads", "2",
        "--se-layers", "1", "--act-layers", "1", "--batch-size", "2", "--workers", "0",
        "--epochs", "1", "--optimizer", "adamw", "--lr", "1e-3", "--no-progress",
        "--max-failure-fraction", "0.2", "--seed", "0", "--output-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = subprocess.run(
        [*cmd, str(REPO / "examples" / "train_finegym.py"), *flags],
        env=env(), capture_output=True, text=True, timeout=240, cwd=REPO,
    )  # fmt: skip
    assert res.returncode != 0
    for rank in (0, 1):  # each rank raised it, with the files of rank 1's share
        said = f"[rank{rank}]: artlib.data.dataset.TooManyFailures: 2 of the 8 videos of epoch 0"
        assert said in res.stderr, res.stderr[-4000:]
    for name in ("clip4.mp4", "clip6.mp4"):
        assert f"[rank0]:   {tmp_path / 'clips' / name}: " in res.stderr
    assert "clip0.mp4: " not in res.stderr
    assert not (tmp_path / "out" / "summary.json").exists()
