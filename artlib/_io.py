"""Small file-system helpers shared by the whole library: atomic writes, a file lock, the cache root.

- :func:`atomic_write` writes to a hidden temporary file in the destination's folder and renames it
  over the destination only when the block ends without an error, so a reader never sees a half
  file and an interrupted write leaves the old file (or none) in place.
- :func:`file_lock` holds an exclusive ``flock`` on a lock file for a block; the operating system
  frees it if the process dies, so a crashed run never leaves a stale lock.
- :func:`cache_root` is the one place where artlib keeps caches: ``$ARTLIB_CACHE`` if set, else
  ``$XDG_CACHE_HOME/artlib``, else ``~/.cache/artlib``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LockHeld",
    "OneLineParser",
    "atomic_save_torch",
    "atomic_write",
    "cache_root",
    "file_lock",
]


def cache_root() -> Path:
    """The cache folder: ``$ARTLIB_CACHE``, else ``$XDG_CACHE_HOME/artlib``, else
    ``~/.cache/artlib`` (not created here)."""
    env = os.environ.get("ARTLIB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "artlib"
    return Path.home() / ".cache" / "artlib"


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    fsync: bool = True,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit rename it to ``path``.

    mode: ``"wb"`` (bytes) or ``"w"`` (text; ``encoding`` defaults to UTF-8). The parent folder is
    created if needed. On an exception the temporary file is removed and ``path`` is untouched.
    fsync: flush the data to disk before the rename (a crash cannot leave an empty ``path``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        if mode == "w":
            fh = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            fh = os.fdopen(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`; returns ``path``."""
    import torch

    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


class LockHeld(RuntimeError):
    """Raised by ``file_lock(path, blocking=False)`` when another process holds the lock."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on the file ``path`` (created with its folder) for the block.

    blocking: wait for the lock (True) or raise :class:`LockHeld` at once if it is taken (False).
    The lock is an ``flock``: the operating system releases it when the process ends, however it
    ends. On a system without ``fcntl`` (Windows) the block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield path
        return
    with open(path, "a+") as fh:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fh.fileno(), flags)
        except BlockingIOError as err:
            raise LockHeld(f"{path} is locked by another process") from err
        try:
            yield path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line (``prog: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
