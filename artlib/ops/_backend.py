"""Backend selection for every op in :mod:`artlib.ops`.

Each op has up to three implementations:

* ``"reference"`` — plain PyTorch (``*_ref`` in the op's file), float64-capable, the ground truth;
* ``"triton"``    — fused Triton kernels, used for CUDA tensors (and for CPU tensors under
  ``TRITON_INTERPRET=1`` when forced, which is how the tests run them);
* ``"native"``    — the C++ kernels in ``csrc/``, used for CPU tensors once they are built.

``ARTLIB_BACKEND`` (``auto`` | ``reference`` | ``triton`` | ``native``) forces one for every op; an
op-specific variable such as ``ARTLIB_BACKEND_MTC_LOSS`` wins over it. ``auto`` picks triton for CUDA
tensors, native for CPU tensors when available, and the reference otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = [
    "backend",
    "select",
    "implementation",
    "triton_available",
    "native_available",
    "BACKENDS",
]

BACKENDS = ("auto", "reference", "triton", "native")


@functools.cache
def triton_available() -> bool:
    """True when Triton imports (its kernels then run on CUDA, or on CPU under TRITON_INTERPRET=1)."""
    return importlib.util.find_spec("triton") is not None


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def native_available(op: str | None = None) -> bool:
    """True when the csrc extension is built and loaded and (if ``op`` is given) implements ``op``."""
    try:
        from artlib.ops import _native
    except ImportError:
        return False
    return _native.available(op)


def _requested(op: str | None) -> str:
    value = None
    if op is not None:
        value = os.environ.get(f"ARTLIB_BACKEND_{op.upper()}")
    if value is None:
        value = os.environ.get("ARTLIB_BACKEND", "auto")
    value = value.strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"ARTLIB_BACKEND must be one of {BACKENDS}, got {value!r}")
    return value


# select() runs on every call of every op (several times per step), so its answer is remembered
# per op, device type, the raw values of the environment variables it reads and the state of the
# native build: a call costs ~1.5 us instead of ~9 us (measured on the 2-core CPU; most of it was
# os.environ's key encoding, which the lookup below skips by reading its underlying mapping).
_selected: dict[tuple, str] = {}
_env_keys: dict[str, tuple] = {}
_ENV_DATA = getattr(os.environ, "_data", None)
_ENCODE = getattr(os.environ, "encodekey", None)


def _env_key(op: str) -> tuple:
    """The raw values of the variables that decide ``op``'s backend (a cache key, not parsed)."""
    names = _env_keys.get(op)
    if names is None:
        names = ("ARTLIB_BACKEND", "TRITON_INTERPRET", "ARTLIB_NO_NATIVE")
        if op:
            names += (f"ARTLIB_BACKEND_{op.upper()}",)
        if isinstance(_ENV_DATA, dict) and _ENCODE is not None:
            names = tuple(_ENCODE(n) for n in names)
        _env_keys[op] = names
    if isinstance(_ENV_DATA, dict) and _ENCODE is not None:
        return tuple(_ENV_DATA.get(n) for n in names)
    return tuple(os.environ.get(n) for n in names)


def _native_state() -> tuple:
    state = _native_module().__dict__["_state"]
    return (state["loaded"], state["error"] is None, state["path"])


@functools.cache
def _native_module():
    from artlib.ops import _native

    return _native


def select(op: str, device: torch.device | str) -> str:
    """The implementation that ``op`` runs for tensors on ``device``.

    A forced backend that cannot run on that device raises a RuntimeError that says why, rather than
    silently running something else.
    """
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    key = (op, device_type, _env_key(op), _native_state())
    name = _selected.get(key)
    if name is None:
        name = _select(op, torch.device(device_type))
        _selected[key[:-1] + (_native_state(),)] = name  # the state after a first build
    return name


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
