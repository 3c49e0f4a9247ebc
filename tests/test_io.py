"""artlib._io: atomic writes, the file lock and the cache-root rule."""

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from artlib._io import LockHeld, atomic_save_torch, atomic_write, cache_root, file_lock


def test_atomic_write_replaces_only_on_success(tmp_path):
    dst = tmp_path / "sub" / "f.txt"
    with atomic_write(dst, "w") as fh:
        fh.write("first")
    assert dst.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_write(dst, "w") as fh:
            fh.write("second, half")
            # the destination still holds the old content while the new one is written
            assert dst.read_text() == "first"
            raise RuntimeError("interrupted")
    assert dst.read_text() == "first"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["f.txt"]  # no temporary left
    with atomic_write(dst) as fh:
        fh.write(b"\x00\x01")
    assert dst.read_bytes() == b"\x00\x01"
    mode = dst.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # an ordinary file's permissions, not mkstemp's 0600
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(dst, "a"):
            pass


def test_atomic_save_torch(tmp_path):
    import torch

    t = torch.arange(5)
    p = atomic_save_torch({"t": t}, tmp_path / "x.pt")
    assert torch.equal(torch.load(p)["t"], t)


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ARTLIB_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("ARTLIB_CACHE")
    assert cache_root() == tmp_path / "x" / "artlib"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == Path(tmp_path / "home" / ".cache" / "artlib")


def _hold(path, ready, release):
    with file_lock(path):
        ready.set()
        release.wait(300)  # the test releases it; the bound only ends an orphan


def test_file_lock_excludes_another_process(tmp_path):
    lock = tmp_path / "d" / ".lock"
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(lock), ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockHeld):
            with file_lock(lock, blocking=False):
                pass
    finally:
        release.set()
        proc.join(300)
    assert proc.exitcode == 0, f"the holder did not end cleanly: exit code {proc.exitcode}"
    with file_lock(lock, blocking=False):  # free again once the holder is gone (else LockHeld)
        pass
