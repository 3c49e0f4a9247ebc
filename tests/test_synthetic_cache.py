"""The synthetic set's cache under concurrency: two generators of the same set on one file system
write it once (a file lock), a waiting process never sees a half set, a complete set is never
deleted, and only local rank 0 of a node generates while the node's other ranks wait."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("av")

REPO = Path(__file__).resolve().parents[1]
KW = dict(num_classes=2, train_per_class=3, val_per_class=1, num_frames=8, size=(32, 32))

# a generator process: logs its pid for every video it writes, then prints the set's root and the
# inode of its train list (the copy it got)
GENERATOR = f"""
    import os, sys, time
    import artlib.data.synthetic as syn
    log, root, go = sys.argv[1], sys.argv[2], sys.argv[3]
    real = syn.write_video
    def logged(path, *a, **k):
        with open(log, "a") as fh:
            fh.write(f"{{os.getpid()}}\\n")
        time.sleep(0.2)  # 8 videos take > 1.6 s: the two runs overlap whatever the load
        return real(path, *a, **k)
    syn.write_video = logged
    open(f"{{go}}.ready-{{os.getpid()}}", "w").close()  # imported: ready to start
    while not os.path.exists(go):  # both start together
        time.sleep(0.01)
    s = syn.make_finegrained_set(root, **{KW!r})
    print(s.root, os.stat(s.train_list).st_ino, flush=True)
"""


def _generator(log, root, go, **env):
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(GENERATOR), str(log), str(root), str(go)],
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(go: Path, n: int, timeout: float = 120) -> None:
    """Wait until ``n`` generator processes have imported everything (their ready files)."""
    deadline = time.monotonic() + timeout
    while len(list(go.parent.glob(f"{go.name}.ready-*"))) < n:
        assert time.monotonic() < deadline, "the generator processes did not start"
        time.sleep(0.05)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out.split()


def test_two_concurrent_generators_write_the_set_once(tmp_path):
    root, log, go = tmp_path / "cache", tmp_path / "writes.log", tmp_path / "go"
    procs = [_generator(log, root, go) for _ in range(2)]
    _wait_ready(go, 2)  # both imported and waiting: they start within milliseconds
    go.touch()
    (root_a, ino_a), (root_b, ino_b) = (_finish(p) for p in procs)
    writers = log.read_text().split()
    # one process wrote every video (2 classes x (3 train + 1 val)); the other waited on the lock
    # and took the finished copy, which is still the one in place
    assert len(writers) == 8 and len(set(writers)) == 1, writers
    assert root_a == root_b and ino_a == ino_b
    from artlib.data import read_generic_list

    train, _ = read_generic_list(os.path.join(root_a, "train.txt"))
    assert len(train) == 6 and all(os.path.getsize(it.path) > 0 for it in train)
    left = sorted(n for n in os.listdir(root) if not n.endswith(".lock"))
    assert left == [os.path.basename(root_a)]  # no temporary folder left


def test_only_local_rank_0_generates_and_the_others_wait(tmp_path):
    root, log, go = tmp_path / "cache", tmp_path / "writes.log", tmp_path / "go"
    go.touch()
    waiter = _generator(log, root, go, LOCAL_RANK="1")
    _wait_ready(go, 1)
    time.sleep(1.5)  # a generator would have written its first videos by now
    assert waiter.poll() is None  # still waiting: a non-zero local rank never generates
    assert not log.exists() and not any(root.glob(".tmp-*"))
    writer = _generator(log, root, go, LOCAL_RANK="0")
    (root_w, ino_w), (root_r, ino_r) = _finish(writer), _finish(waiter)
    assert (root_w, ino_w) == (root_r, ino_r)
    assert len(set(log.read_text().split())) == 1  # the writer alone


def test_a_waiting_rank_gives_up_with_a_clear_error(tmp_path, monkeypatch):
    from artlib.data.synthetic import make_finegrained_set

    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("ARTLIB_SYNTHETIC_WAIT", "0.5")
    with pytest.raises(RuntimeError, match="waited 0.5 s for local rank 0 to write .*finegrained-"):
        make_finegrained_set(tmp_path, **KW)
    assert os.listdir(tmp_path) == []  # it wrote nothing


def test_a_complete_set_is_never_replaced_by_a_later_generator(tmp_path, monkeypatch):
    """The race of the unlocked cache: a generator that saw no set at its first check must not
    delete a complete set another process renamed into place meanwhile."""
    import artlib.data.synthetic as syn

    first = syn.make_finegrained_set(tmp_path, **KW)
    inode = os.stat(first.train_list).st_ino
    real_exists = os.path.exists
    calls = []

    def first_check_misses(path):
        if str(path).endswith("config.json") and not calls:
            calls.append(path)
            return False
        return real_exists(path)

    written = []
    monkeypatch.setattr(syn.os.path, "exists", first_check_misses)
    monkeypatch.setattr(syn, "write_video", lambda *a, **k: written.append(a[0]))
    again = syn.make_finegrained_set(tmp_path, **KW)
    monkeypatch.undo()
    assert calls and again == first and written == []  # re-checked under the lock: no rewrite
    assert os.stat(first.train_list).st_ino == inode
