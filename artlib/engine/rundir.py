"""One run owns its output folder, and a killed run leaves a folder that resumes cleanly.

Small pieces the trainer calls around its epochs (each one tested on real files and processes in
tests/test_faults.py):

- :class:`RunFolderLock`: an exclusive ``flock`` on ``OUT/.run.lock``, held by rank 0 for the whole
  run. A second run on the same folder stops with one line naming the running one (pid, host, start
  time). The operating system frees the lock when the holder dies, however it dies, so a killed run
  never leaves a stale lock behind.
- :func:`check_fresh`: a new run (no ``--resume``) into a folder that already holds a run stops with
  one line offering ``--resume auto``, a new folder or ``--overwrite``; with ``overwrite`` the old
  run's outputs are removed first (files artlib did not write are left alone).
- :func:`set_parent_death_signal`: a worker asks the kernel to kill it when its parent (the
  ``torchrun`` agent) dies, so no orphan keeps training into the folder (Linux; a no-op elsewhere).
- :func:`ignore_agent_signals`: a worker under torchrun that is already stopping (a refusal, an
  interrupt) says its one line instead of a second interrupt's traceback.
- :func:`resume_diff`: the saved configuration against the new one; an option that defines the
  model or the data refuses with one line naming the option and both values, the others are
  returned so the run applies and records them.
- :func:`truncate_metrics`: ``metrics.csv`` cut back to the resumed epoch (a half-written last line
  dropped too), so a resumed run never holds an epoch twice.
- :func:`remove_stale_parts`: the hidden ``.<name>.<random>.part`` files of writes a kill interrupted
  (``artlib._io.atomic_write``), removed while the lock is held.
- :func:`newest_intact_checkpoint`: the newest checkpoint that reads; an unreadable newer one is
  skipped with a warning naming it.

Every refusal is a :class:`RunFolderError` (a ``ValueError``) whose message is one line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from artlib._io import atomic_write

__all__ = [
    "LOCK_NAME",
    "RUN_OUTPUTS",
    "RunFolderBusy",
    "RunFolderError",
    "RunFolderLock",
    "check_fresh",
    "ignore_agent_signals",
    "newest_intact_checkpoint",
    "remove_stale_parts",
    "resume_diff",
    "set_parent_death_signal",
    "truncate_metrics",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
# what a training run writes into its output folder (artlib.engine.trainer; eval/ is
# artlib.evaluate's default output beside the checkpoints): these make a folder "hold a run", and
# --overwrite removes exactly these
RUN_OUTPUTS = (
    "checkpoints",
    "eval",
    "metrics.csv",
    "config.yaml",
    "tensorboard",
    "backbone.pt",
    "per_class.csv",
    "confusion.png",
    "summary.json",
)
_CKPT_NAME = re.compile(r"^checkpoint_epoch(\d+)\.pt$")


class RunFolderError(ValueError):
    """A run refused before it starts; the message is one line."""


class RunFolderBusy(RunFolderError):
    """Another live run holds the output folder's lock."""


# ------------------------------------------------------------------------------------------ lock
class RunFolderLock:
    """The output folder's lock: ``OUT/.run.lock``, an exclusive ``flock`` held until
    :meth:`release` (or the end of a ``with`` block, or the process). The file records the holder
    as one JSON line ``{"pid", "host", "started"}`` for the message a second run gets.

    Usage (rank 0 only)::

        lock = RunFolderLock(out_dir).acquire()   # RunFolderBusy if another run holds it
        ...
        lock.release()
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / LOCK_NAME
        self._fh = None

    def acquire(self) -> RunFolderLock:
        """Take the lock without waiting; :class:`RunFolderBusy` (one line: pid, host, start time
        of the holder) when another process holds it. Creates the folder."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: unlocked
            return self
        if self._fh is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RunFolderBusy(
                f"--output-dir: {self.path.parent} is in use by another run "
                f"({describe_holder(self.path)}); wait for it to end or stop it, "
                "or choose another --output-dir"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(holder) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        """Free the lock (the file stays; its next holder rewrites it)."""
        if self._fh is None:
            return
        import fcntl

        fh, self._fh = self._fh, None
        try:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        finally:
            fh.close()

    @property
    def held(self) -> bool:
        return self._fh is not None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe_holder(lock_path: str | os.PathLike) -> str:
    """``pid 123 on host h, started 2026-01-02 10:11:12 +0000`` from a lock file (what can be read
    of it: a holder that is still writing it shows as unknown)."""
    try:
        info = json.loads(Path(lock_path).read_text().strip() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "pid unknown"
    return f"pid {info['pid']} on host {info.get('host', '?')}, started {info.get('started', '?')}"


# ------------------------------------------------------------------------------------ fresh run
def run_outputs(out_dir: str | os.PathLike) -> list[str]:
    """The names of :data:`RUN_OUTPUTS` present in ``out_dir`` (sorted), plus any TensorBoard
    event file at its top level."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    names = {n for n in RUN_OUTPUTS if (out / n).exists()}
    names |= {p.name for p in out.glob("events.out.tfevents.*")}
    return sorted(names)


def check_fresh(
    out_dir: str | os.PathLike, resume: str | os.PathLike | None, *, overwrite: bool = False
) -> list[str]:
    """Refuse a new run into a folder that holds one.

    ``resume``: the run's ``--resume`` (None or "" for a new run): with one, the folder's contents
    are the point and nothing is checked. Without, a folder holding any of :data:`RUN_OUTPUTS`
    raises :class:`RunFolderError` (one line offering ``--resume auto``, a new folder or
    ``--overwrite``), unless ``overwrite``: then those outputs are removed. Returns the names found
    (removed, with ``overwrite``). Other files in the folder are never touched.
    """
    if resume:
        return []
    found = run_outputs(out_dir)
    if not found:
        return []
    if not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise RunFolderError(
            f"--output-dir: {out_dir} already holds a run ({shown}); pass --resume auto to "
            "continue it, choose a new --output-dir, or pass --overwrite to replace it"
        )
    out = Path(out_dir)
    for name in found:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return found


# ---------------------------------------------------------------------------- parent death
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux ``prctl
    PR_SET_PDEATHSIG``): a worker started by ``torchrun`` then dies with its agent instead of going
    on as an orphan. If the parent is already gone by the time it is set (it died in between), the
    signal is sent at once. Returns True when set, False where unsupported (not Linux, no libc).

    The default SIGKILL works even while the worker is blocked in a collective, where a Python
    handler of SIGTERM would never run."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if ok and os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    return ok


def ignore_agent_signals() -> None:
    """A worker under torchrun that is already stopping ignores SIGINT and SIGTERM from now on:
    the agent passes the terminal's Ctrl-C on again, and stops the other ranks with SIGTERM once
    one has exited; either, arriving while the worker says why it stops (or exits), would replace
    that one line by a traceback or by "interrupted". Outside torchrun (no ``LOCAL_RANK``):
    nothing, so that a process that goes on keeps its Ctrl-C."""
    if "LOCAL_RANK" in os.environ:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


# ------------------------------------------------------------------------------------ resume
_MISSING = object()


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _default_flag(key: str) -> str:
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (type(a) is type(b) and a == b)
    return a == b


def resume_diff(
    saved: Mapping,
    new: Mapping,
    fixed: Iterable[str],
    *,
    flag: Mapping[str, str] | Callable[[str], str] | None = None,
    ignore: Iterable[str] = ("run.resume",),
) -> dict[str, tuple[Any, Any]]:
    """Compare the checkpoint's configuration with the resumed run's.

    saved, new: nested dicts as ``config_to_dict`` gives them (``{"model": {"dim": 384}, ...}``).
    fixed: dotted keys (``"model.dim"``) that define the model or the data; one that differs raises
    :class:`RunFolderError`: ``--dim: the checkpoint was trained with 384, this run asks for 512;
    ...``. A key missing on either side (an option added since) is not compared.
    flag: the command-line name of a dotted key (a mapping or a function; default ``--<name>``).
    ignore: keys that differ on every resume by nature.
    Returns ``{dotted key: (saved value, new value)}`` of every other option that changed, in key
    order: the run applies them and records them in its config.yaml.
    """
    a, b = _flat(saved), _flat(new)
    name = flag.get if isinstance(flag, Mapping) else flag
    fixed, ignore = set(fixed), set(ignore)
    changed: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        old, cur = a.get(key, _MISSING), b.get(key, _MISSING)
        if key in ignore or old is _MISSING or cur is _MISSING or _same(old, cur):
            continue
        if key in fixed:
            shown = (name(key) if name else None) or _default_flag(key)
            raise RunFolderError(
                f"{shown}: the checkpoint was trained with {old!r}, this run asks for {cur!r}; "
                "a resumed run keeps the model and the data: drop the option or start a new "
                "--output-dir"
            )
        changed[key] = (old, cur)
    return changed


# ----------------------------------------------------------------------------- crash leftovers
def truncate_metrics(csv_path: str | os.PathLike, epoch: int, *, column: str = "epoch") -> int:
    """Keep the header and the rows of ``metrics.csv`` whose ``column`` is <= ``epoch`` (the
    resumed checkpoint's epoch); drop later rows and a half-written or unparsable line (a kill in
    the middle of a write). Rewritten atomically. Returns the number of lines dropped (0: the file
    is unchanged, or absent)."""
    path = Path(csv_path)
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        text = fh.read()  # line ends kept as written (csv writes \r\n)
    lines = text.splitlines(keepends=True)
    if not lines:
        return 0
    header = next(csv.reader([lines[0]]), [])
    if column not in header:
        raise RunFolderError(f"{path}: no {column!r} column in its header {header}")
    col = header.index(column)
    keep = [lines[0] if lines[0].endswith("\n") else lines[0] + "\n"]
    dropped = 0
    for line in lines[1:]:
        row = next(csv.reader([line]), [])
        try:
            ok = line.endswith("\n") and len(row) == len(header) and int(row[col]) <= epoch
        except ValueError:
            ok = False
        if ok:
            keep.append(line)
        else:
            dropped += 1
    if dropped or keep[0] != lines[0]:
        with atomic_write(path, "w", newline="") as fh:
            fh.write("".join(keep))
    return dropped


def remove_stale_parts(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary ``.<name>.<random>.part`` files (``artlib._io.atomic_write``) under
    ``out_dir``, recursively: the leftovers of writes a kill interrupted. Call it only while
    holding the folder's lock (a live run's write in progress looks the same). Returns them."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    removed = []
    for p in sorted(out.rglob(".*.part")):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def newest_intact_checkpoint(
    directory: str | os.PathLike,
    load: Callable[[Path], dict] | None = None,
    *,
    warn: Callable[[str], None] | None = None,
) -> tuple[Path, dict] | None:
    """The newest ``checkpoint_epoch<N>.pt`` in ``directory`` that loads, with its state: each
    newer one that does not load (truncated, not a checkpoint) is skipped with a warning naming it
    and why. ``load``: the reader (default ``artlib.weights_io.load_checkpoint``, which
    raises ``CheckpointError``/``OSError``/``ValueError`` on a bad file). None when the folder holds
    no checkpoint; :class:`RunFolderError` when it holds some but none is readable."""
    if load is None:
        from artlib.weights_io import load_checkpoint

        def load(p):
            return load_checkpoint(p, what="--resume")

    warn = warn or log.warning
    folder = Path(directory)
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _CKPT_NAME.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
    if not found:
        return None
    bad = []
    for _, p in sorted(found, reverse=True):
        try:
            return p, load(p)
        except (OSError, ValueError, RuntimeError, EOFError) as err:
            reason = _one_line(err)
            bad.append(p.name)
            warn(f"--resume auto: skipping {p}, which cannot be read ({reason})")
    raise RunFolderError(
        f"--resume auto: no readable checkpoint in {folder} ({', '.join(bad)} all unreadable); "
        "pass --resume PATH or start a new --output-dir"
    )


def _one_line(err: BaseException) -> str:
    buf = io.StringIO(str(err))
    first = next((ln.strip() for ln in buf if ln.strip()), "")
    return first or type(err).__name__
