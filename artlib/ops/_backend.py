"""Backend selection for every op in :mod:`artlib.ops`.

Each op has up to three implementations:

* ``"reference"`` — plain PyTorch (``*_ref`` in the op's file), float64-capable, the ground truth;
* ``"triton"``    — fused Triton kernels, used for CUDA tensors (and for CPU tensors under
  ``TRITON_INTERPRET=1`` when forced, which is how the tests run them);
* ``"native"``    — the C++ kernels in ``csrc/``, used for CPU tensors once they are built.

``ARTLIB_BACKEND`` (``auto`` | ``reference`` | ``triton`` | ``native``) forces one for every op; an
op-specific variable such as ``ARTLIB_BACKEND_MTC_LOSS`` wins over it. ``auto`` picks triton for CUDA
tensors, native for CPU tensors when available, and the reference otherwise. The variables are read
once, on the first op call; each (op, device type) is then resolved once. Tests and benchmarks switch
backends with :func:`use_backend` (a context manager) or :func:`set_backend`, not the environment.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading

import torch

__all__ = [
    "backend",
    "select",
    "implementation",
    "triton_available",
    "native_available",
    "set_backend",
    "use_backend",
    "reset",
    "BACKENDS",
]

BACKENDS = ("auto", "reference", "triton", "native")


@functools.cache
def triton_available() -> bool:
    """True when Triton imports (its kernels then run on CUDA, or on CPU under TRITON_INTERPRET=1)."""
    return importlib.util.find_spec("triton") is not None


def native_available(op: str | None = None) -> bool:
    """True when the csrc extension is built and loaded and (if ``op`` is given) implements ``op``."""
    try:
        from artlib.ops import _native
    except ImportError:
        return False
    return _native.available(op)


# ---- the choice, made once per (op, device type) ---------------------------------------------------
#
# The environment is read once, on the first choice; an override set by set_backend() / use_backend()
# (tests, benchmarks) wins over it. Each (op, device type) is resolved once and remembered, so a call
# of an op costs one dict lookup; changing an override forgets the choices made so far.

_lock = threading.Lock()
_selected: dict[tuple[str, str], str] = {}
_overrides: dict[str, str] = {}  # op ("" for every op) -> backend
_interpret_override: list[bool] = []
_derived: list[dict] = []  # caches of values derived from the choices, cleared with them


def register_cache(cache: dict) -> dict:
    """Clear ``cache`` whenever the choices are forgotten (it holds values derived from them)."""
    _derived.append(cache)
    return cache


def _forget() -> None:
    _selected.clear()
    for cache in _derived:
        cache.clear()


_forced_by_env: dict[str, str] = {}  # what _environment() read, as a plain dict (see planned())


@functools.cache
def _environment() -> tuple[dict[str, str], bool]:
    """({op or "": backend} from ARTLIB_BACKEND / ARTLIB_BACKEND_<OP>, TRITON_INTERPRET), read once."""
    forced = {}
    for name, value in os.environ.items():
        if name == "ARTLIB_BACKEND" or name.startswith("ARTLIB_BACKEND_"):
            forced[name[len("ARTLIB_BACKEND_") :].lower()] = value
    _forced_by_env.clear()
    _forced_by_env.update({k: v.strip().lower() for k, v in forced.items()})
    return forced, os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpret() -> bool:
    return _interpret_override[-1] if _interpret_override else _environment()[1]


def _requested(op: str | None) -> str:
    op = op or ""
    forced = _environment()[0]
    source = "set_backend"
    if op in _overrides:
        value = _overrides[op]
    elif "" in _overrides:
        value = _overrides[""]
    elif op in forced:
        value, source = forced[op], f"ARTLIB_BACKEND_{op.upper()}"
    else:
        value, source = forced.get("", "auto"), "ARTLIB_BACKEND"
    value = value.strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {value!r}")
    return value


def set_backend(name: str | None, op: str | None = None) -> None:
    """Force ``name`` (one of :data:`BACKENDS`) for ``op`` (every op when None), over the
    environment's choice; ``name=None`` removes the override. For tests and benchmarks; prefer
    :func:`use_backend`, which restores what was there."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    with _lock:
        if name is None:
            _overrides.pop(op or "", None)
        else:
            _overrides[op or ""] = name
        _forget()


@contextlib.contextmanager
def use_backend(name: str, op: str | None = None, *, interpret: bool | None = None):
    """Run ``op`` (every op when None) on backend ``name`` inside the block, e.g.
    ``with artlib.ops.use_backend("reference", "mtc_loss"): ...``; the choice before is restored on
    exit. ``interpret`` overrides TRITON_INTERPRET's "may the Triton kernels run on CPU tensors"."""
    key = op or ""
    with _lock:
        before = _overrides.get(key)
    set_backend(name, op)
    if interpret is not None:
        _interpret_override.append(interpret)
    try:
        yield
    finally:
        if interpret is not None:
            _interpret_override.pop()
        set_backend(before, op)


def reset() -> None:
    """Forget every choice and override and read the environment again on the next call (for a
    process whose environment or native build changed on purpose, e.g. a test)."""
    with _lock:
        _overrides.clear()
        _forget()
        _interpret_override.clear()
        _environment.cache_clear()


def select(op: str, device: torch.device | str) -> str:
    """The implementation that ``op`` runs for tensors on ``device``, chosen on the first call for
    this (op, device type) and remembered.

    A forced backend that cannot run on that device raises a RuntimeError that says why, rather than
    silently running something else.
    """
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    name = _selected.get((op, device_type))
    if name is None:
        name = _select(op, torch.device(device_type))
        _selected[(op, device_type)] = name
    return name


def planned(op: str, device_type: str) -> str:
    """What :func:`select` chooses for ``op`` on ``device_type``, or, before anything was chosen
    there, what it will choose if the native kernels build, without building them or raising.
    Plain dict reads only, so torch.compile can trace it (a compile that starts before any eager
    call of the op); the op itself still runs what select() says."""
    name = _selected.get((op, device_type))
    if name is not None:
        return name
    want = (
        _overrides.get(op) or _overrides.get("") or _forced_by_env.get(op) or _forced_by_env.get("")
    )
    if want and want != "auto":
        return want
    return {"cuda": "triton", "cpu": "native"}.get(device_type, "reference")


def _select(op: str, device: torch.device) -> str:
    want = _requested(op)
    if want == "reference":
        return "reference"
    if want == "triton":
        if not triton_available():
            raise RuntimeError("ARTLIB_BACKEND=triton but triton is not installed")
        if device.type != "cuda" and not _interpret():
            raise RuntimeError(
                f"ARTLIB_BACKEND=triton needs CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 "
                "to run the Triton kernels on CPU (slow, for tests)"
            )
        return "triton"
    if want == "native":
        if device.type != "cpu":
            raise RuntimeError(
                f"ARTLIB_BACKEND=native runs on CPU tensors only (got {device.type})"
            )
        if not native_available(op):
            raise RuntimeError(
                "ARTLIB_BACKEND=native but the csrc extension is not available: " + _native_reason()
            )
        return "native"
    # auto
    if device.type == "cuda" and triton_available():
        return "triton"
    if device.type == "cpu" and native_available(op):
        return "native"
    return "reference"


def implementation(op: str, t: torch.Tensor) -> str:
    """The implementation that ``op`` runs for the tensor ``t``: :func:`select` for its device, with
    the two rules every op shares:

    * the Triton kernels take fp32/fp16/bf16 and accumulate in fp32, so float64 tensors (the ground
      truth's precision) run the reference;
    * an op without a native kernel (not in ``artlib.ops._native.OPS``) runs the reference where
      native is forced, instead of failing.
    """
    try:
        name = select(op, t.device)
    except RuntimeError:
        if _requested(op) == "native" and not _has_native_kernel(op):
            return "reference"
        raise
    if name == "triton" and t.dtype == torch.float64:
        return "reference"
    return name


def _has_native_kernel(op: str) -> bool:
    from artlib.ops import _native

    return op in _native.OPS


def _native_reason() -> str:
    try:
        from artlib.ops import _native
    except ImportError as exc:  # pragma: no cover - only without the module
        return str(exc)
    return _native.reason()


def backend(op: str | None = None, device: torch.device | str = "cpu") -> str:
    """Say which implementation runs for ``op`` (or, with ``op=None``, for the ops in general) on
    ``device``; e.g. ``artlib.ops.backend("mtc_loss", "cuda") -> "triton"``.

    With ``op=None`` on CPU the answer also says why the native path is missing when it is.
    """
    if op is None:
        device = torch.device(device)
        if device.type == "cpu" and _requested(None) == "auto" and not native_available():
            return "reference (native unavailable: " + _native_reason() + ")"
    return select(op or "", device)
