"""Loader for the native CPU kernels in ``csrc/`` (filled in by the csrc issue).

Until the extension exists, :func:`available` is False and :func:`reason` says why, so the reference
path runs and ``artlib.ops.backend()`` reports it.
"""

from __future__ import annotations


def available(op: str | None = None) -> bool:
    return False


def reason() -> str:
    return "csrc extension not built yet"
