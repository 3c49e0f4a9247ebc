"""Keep freed memory in the process while a long inference loop runs (glibc only).

A model's forward on CPU allocates and frees the same large temporaries batch after batch. glibc
hands blocks above its mmap threshold (128 KiB, raised dynamically up to the size of the largest
block freed so far) straight back to the kernel and trims the heap's free top above 128 KiB, so
every batch maps fresh pages again and pays a page fault per 4 KiB (the kernel zeroes each one):
on the timeline of a long video (``artlib.predict_timeline``) about 5,000 faults per batch of 16
windows and 13 % of the run's CPU time on a 2-core KVM machine.

``retain_freed()`` raises both thresholds for the duration of a ``with`` block (blocks up to
``MMAP_MAX`` come from the heap, which keeps up to ``TRIM_MB`` of free top), then returns what
is free to the kernel (``malloc_trim``) and leaves the thresholds where glibc's dynamic rule would
have taken them (a set threshold ends that rule; its fixed defaults made later training steps in
the process fault 2-4x as often). Elsewhere than glibc (macOS, musl) it does nothing.
Process-wide while it lasts: other threads' allocations are served the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_MAX = 32 * 2**20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_MB = 256
_lock = threading.Lock()
_depth = 0


@functools.cache
def _libc():
    """glibc's handle, or None elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def retain_freed(trim_mb: int = TRIM_MB):
    """Inside the block, freed memory stays in the process (module docstring); nestable."""
    global _depth
    libc = _libc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, int(trim_mb) * 2**20)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                # not glibc's fixed defaults: setting a threshold ends its dynamic rule for good,
                # and a fixed 128 KiB made later training steps fault 2-4x as often (+5-10 % CPU).
                # The state that rule reaches once a block of MMAP_MAX has been freed instead.
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_MAX)
                libc.malloc_trim(0)
