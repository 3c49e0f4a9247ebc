"""Loader and Python entry points for the native CPU kernels in ``csrc/``.

The C++ sources (one translation unit per op, lean ATen headers) are compiled once with
:func:`torch.utils.cpp_extension.load` (a C++17 compiler and ``ninja`` are needed), either ahead with
``python -m artlib.ops.build`` (which reports the time, compiler, flags and where the library went)
or on first use, which logs one line saying so. The library lands in a cache directory keyed by a
hash of the sources, the build flags, the torch version and the CPU's vector capability:

    $ARTLIB_CACHE/native/<hash>/      (default ~/.cache/artlib/native/<hash>, or $XDG_CACHE_HOME/artlib)

Later processes load the cached library directly (no compiler needed, ~0.1 s). A file lock makes
concurrent test workers or ranks wait for one build instead of racing. The library registers six
ops in the ``artlib`` namespace, for CPU tensors only (the CUDA path stays on Triton):

* ``artlib::native_region_attention_core_fwd(q, x) -> (a, lse)``
* ``artlib::native_region_attention_core_bwd(da, q, x, a, lse) -> (dq, dx)``
* ``artlib::native_region_attention_fwd(query, x, in_proj_weight, in_proj_bias, out_proj_weight,
  out_proj_bias, num_heads) -> (out, A, P, qs, context)``: the whole absorbed op, the
  projections around the core included, in one call; A (heads, N K, d) and the softmax weights
  P (N, heads K, L) are kept for ``_bwd`` (its gradients), which then skips recomputing the scores
* ``artlib::native_mtc_loss_fwd(r, lam, hinge, w_s, w_t, w_tr) -> [total, spatial, temporal, tracklet]``
* ``artlib::native_mtc_loss_bwd(grad, r, lam, hinge, w_s, w_t, w_tr) -> dr``
* ``artlib::native_tracklet_aggregate_fwd(r, s, tau) -> (out, p, w)``: Eq. 9 and the saliency it
  keeps for the backward
* ``artlib::native_tracklet_aggregate_bwd(grad, r, s, p, w, tau) -> (dr, ds)``

Never a broken import: with no compiler, a failed build or ``ARTLIB_NO_NATIVE=1``, :func:`available`
is False, :func:`reason` says why, and ``artlib.ops.backend()`` reports it; the reference runs.

Environment: ``ARTLIB_NO_NATIVE=1`` disables the kernels; ``ARTLIB_CACHE`` moves the cache;
``ARTLIB_CSRC`` points at another copy of the sources; ``ARTLIB_NATIVE_VERBOSE=1`` shows the build;
``ARTLIB_NATIVE_POOL_MB`` caps the cache of large internal buffers (residuals kept for a backward,
reused across calls instead of fresh pages; default 512, 0 turns it off; csrc/native.h).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from artlib._io import cache_root, file_lock

__all__ = [
    "OPS",
    "available",
    "reason",
    "load",
    "build_info",
    "build",
    "compiler",
    "region_attention_core_forward",
    "region_attention_core_backward",
    "mtc_loss_forward",
    "mtc_loss_backward",
    "tracklet_aggregate_forward",
    "tracklet_aggregate_backward",
]

log = logging.getLogger("artlib")

# The ops that have native kernels; ``available(op)`` is False for every other name.
OPS = ("region_attention", "mtc_loss", "tracklet_aggregate")

_SOURCES = ("region_attention.cpp", "mtc_loss.cpp", "tracklet_aggregate.cpp")
_HEADERS = ("native.h", "gemm.h")
_NAME = "artlib_native"

_lock = threading.Lock()
_state: dict[str, object] = {
    "loaded": False,
    "error": None,
    "path": None,
    "build_s": None,
    "cflags": None,
    "ldflags": None,
    "build_dir": None,
}


# ---- locating the sources and the cache -----------------------------------------------------------


def _csrc_dir() -> Path | None:
    """The directory holding the C++ sources: $ARTLIB_CSRC, else ``artlib/_csrc`` (an installed
    wheel), else ``<repo>/csrc`` (a source checkout or an editable install)."""
    here = Path(__file__).resolve().parent  # artlib/ops
    if os.environ.get("ARTLIB_CSRC"):
        candidates = [Path(os.environ["ARTLIB_CSRC"])]
    else:
        candidates = [here.parent / "_csrc", here.parent.parent / "csrc"]
    for c in candidates:
        if all((c / s).is_file() for s in _SOURCES + _HEADERS):
            return c
    return None


def _cache_root() -> Path:
    return cache_root() / "native"


def _cpu_flags() -> tuple[str, list[str]]:
    """ATen's vector capability for this CPU and the flags that compile ``at::vec`` for it.

    The build happens on the machine that runs it, so it may target that machine's vector unit;
    the capability is part of the cache key, so a cache shared between different CPUs stays right.
    AVX512 machines use the AVX2 code path (the kernels are GEMM-bound; AVX2 is what was measured).
    """
    cap = "DEFAULT"
    with contextlib.suppress(Exception):
        cap = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() in ("x86_64", "amd64") and cap in ("AVX2", "AVX512"):
        return "AVX2", [
            "-mavx2",
            "-mfma",
            "-mf16c",
            "-DCPU_CAPABILITY=AVX2",
            "-DCPU_CAPABILITY_AVX2",
        ]
    return "DEFAULT", ["-DCPU_CAPABILITY=DEFAULT"]


def _build_config(src: Path) -> tuple[str, list[str], list[str]]:
    cap, vec_flags = _cpu_flags()
    # MSVC: no at::vec flags, no OpenMP (at::parallel_for runs serially)
    if sys.platform == "win32":
        cflags, ldflags = ["/O2", "/DNDEBUG", "/DCPU_CAPABILITY=DEFAULT"], []
        cap = "DEFAULT"
    elif sys.platform == "darwin":  # Apple clang has no -fopenmp: the kernels run single-threaded
        cflags, ldflags = ["-O3", "-DNDEBUG", *vec_flags], []
    else:  # at::parallel_for is OpenMP inside the headers: without -fopenmp it runs serially
        cflags, ldflags = ["-O3", "-fopenmp", "-DNDEBUG", *vec_flags], ["-fopenmp"]
    h = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        h.update(name.encode())
        h.update((src / name).read_bytes())
    for part in (
        torch.__version__,
        str(getattr(torch.version, "git_version", "")),
        sys.version,
        platform.machine(),
        cap,
        " ".join(cflags + ldflags),
    ):
        h.update(part.encode())
    return h.hexdigest()[:16], cflags, ldflags


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported without its "No CUDA runtime is found, using
    CUDA_HOME=..." warning: these kernels are CPU-only, CUDA plays no part in their build."""
    logger = logging.getLogger("torch.utils.cpp_extension")

    def no_cuda_warning(record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()

    logger.addFilter(no_cuda_warning)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.removeFilter(no_cuda_warning)
    return cpp_extension


def compiler() -> str:
    """The C++ compiler the build uses and its version line, e.g. ``"c++ (g++ 12.2.0)"``."""
    import shutil
    import subprocess

    cxx = os.environ.get("CXX", "c++" if sys.platform != "win32" else "cl")
    path = shutil.which(cxx)
    if path is None:
        return f"{cxx} (not found)"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        version = (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "version unknown"
    return f"{cxx} ({version})"


def _library_file(build_dir: Path) -> Path | None:
    for suffix in (".so", ".pyd", ".dylib"):
        p = build_dir / (_NAME + suffix)
        if p.is_file():
            return p
    return None


def _build_and_load() -> None:
    src = _csrc_dir()
    if src is None:
        where = os.environ.get("ARTLIB_CSRC") or "next to the artlib package"
        raise FileNotFoundError(
            f"the C++ sources ({', '.join(_SOURCES + _HEADERS)}) were not found ({where}); set "
            "ARTLIB_CSRC to the csrc/ directory of an artlib checkout"
        )
    key, cflags, ldflags = _build_config(src)
    build_dir = _cache_root() / key
    _state.update(cflags=cflags, ldflags=ldflags, build_dir=str(build_dir))
    with file_lock(build_dir.with_suffix(".lock")):
        lib = _library_file(build_dir)
        if lib is None:
            cpp_extension = _cpp_extension()
            build_dir.mkdir(parents=True, exist_ok=True)
            log.warning(
                "artlib: building the native CPU kernels once (%d C++ files, 1-4 min on 2 cores; "
                "later runs load the cached library) into %s; `python -m artlib.ops.build` does "
                "it ahead",
                len(_SOURCES),
                build_dir,
            )
            start = time.perf_counter()
            cpp_extension.load(
                name=_NAME,
                sources=[str(src / s) for s in _SOURCES],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                extra_include_paths=[str(src)],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=os.environ.get("ARTLIB_NATIVE_VERBOSE", "0") == "1",
            )
            _state["build_s"] = time.perf_counter() - start
            log.info("artlib: native CPU kernels built in %.1f s", _state["build_s"])
            lib = _library_file(build_dir)
            if lib is None:  # pragma: no cover - cpp_extension loaded something else
                raise RuntimeError(f"the build finished but no {_NAME} library is in {build_dir}")
        else:
            torch.ops.load_library(str(lib))
    _state["path"] = str(lib)
    _register_fakes()


def _register_fakes() -> None:
    """Shape functions so the ops trace under FakeTensor / torch.compile / opcheck."""

    @torch.library.register_fake("artlib::native_region_attention_core_fwd")
    def _(q, x):
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=acc)

    @torch.library.register_fake("artlib::native_region_attention_core_bwd")
    def _(da, q, x, a, lse):
        return q.new_empty(q.shape), x.new_empty(x.shape)

    @torch.library.register_fake("artlib::native_region_attention_fwd")
    def _(query, x, w_in, b_in, w_out, b_out, heads):
        n, k, d = query.shape
        acc = torch.float64 if query.dtype == torch.float64 else torch.float32
        return (
            query.new_empty(n, k, d),
            query.new_empty(heads, n * k, d),
            query.new_empty(n, heads * k, x.shape[1], dtype=acc),
            query.new_empty(n * k, d),
            query.new_empty(n * k, d),
        )

    @torch.library.register_fake("artlib::native_region_attention_bwd")
    def _(d_out, query, x, w_in, w_out, a_hm, p, qs, context, heads):
        d = query.shape[-1]
        return (
            torch.empty_like(query),
            x.new_empty(x.shape),
            w_in.new_empty(w_in.shape),
            w_in.new_empty(3 * d),
            w_out.new_empty(w_out.shape),
            w_out.new_empty(d),
        )

    @torch.library.register_fake("artlib::native_mtc_loss_fwd")
    def _(r, lam, hinge, w_s, w_t, w_tr):
        return r.new_empty((4,), dtype=torch.float64 if r.dtype == torch.float64 else torch.float32)

    @torch.library.register_fake("artlib::native_mtc_loss_bwd")
    def _(grad, r, lam, hinge, w_s, w_t, w_tr):
        return r.new_empty(r.shape)

    @torch.library.register_fake("artlib::native_tracklet_aggregate_fwd")
    def _(r, s, tau):
        b, t, k, d = r.shape
        acc = torch.float64 if r.dtype == torch.float64 else torch.float32
        return (
            r.new_empty(b, k, d),
            r.new_empty(b, k, k, t, dtype=acc),
            r.new_empty(b, k, t, dtype=acc),
        )

    @torch.library.register_fake("artlib::native_tracklet_aggregate_bwd")
    def _(grad, r, s, p, w, tau):
        return r.new_empty(r.shape), s.new_empty(s.shape)


def _disabled() -> bool:
    return os.environ.get("ARTLIB_NO_NATIVE", "0").strip() not in ("", "0")


def load() -> bool:
    """Build (first time) and load the extension; True when its ops are registered. Never raises."""
    if _disabled():
        return False
    if _state["loaded"]:
        return True
    with _lock:
        if _state["loaded"]:
            return True
        if _state["error"] is not None:
            return False
        try:
            _build_and_load()
        except Exception as exc:  # noqa: BLE001 - any failure means "use the reference", with why
            _state["error"] = f"{type(exc).__name__}: {exc}".strip()
            log.warning(
                "artlib: native CPU kernels unavailable (%s)", _state["error"].splitlines()[0]
            )
            return False
        _state["loaded"] = True
        return True


def available(op: str | None = None) -> bool:
    """True when the native kernels are built and loaded and (if ``op`` is given) implement ``op``.

    The first call with ``op`` in :data:`OPS` (or ``None``) triggers the one-time build.
    """
    if op and op not in OPS:  # None or "" (backend() with no op): the extension as a whole
        return False
    return load()


def reason() -> str:
    """Why the native kernels are not available ("" when they are)."""
    if _disabled():
        return "disabled by ARTLIB_NO_NATIVE=1"
    if _state["loaded"]:
        return ""
    if _state["error"] is not None:
        return str(_state["error"])
    return "not built yet (builds on first use)"


def build_info() -> dict[str, object]:
    """Where the library came from: its path, the build time in seconds (None when it was cached),
    the vector capability and the flags it was compiled with."""
    return {
        "loaded": bool(_state["loaded"]),
        "path": _state["path"],
        "build_s": _state["build_s"],
        "capability": _cpu_flags()[0],
        "cflags": _state["cflags"],
        "ldflags": _state["ldflags"],
        "sources": list(_SOURCES),
        "error": _state["error"],
    }


def build(force: bool = False) -> dict[str, object]:
    """Build the library now (``force``: even when a cached one exists) and load it; returns
    :func:`build_info`. What ``python -m artlib.ops.build`` runs."""
    if force and _state["loaded"]:
        raise RuntimeError(
            "the native library is already loaded in this process; rebuild in a new one"
        )
    if force:
        src = _csrc_dir()
        if src is not None:
            key, _, _ = _build_config(src)
            build_dir = _cache_root() / key
            with file_lock(build_dir.with_suffix(".lock")):
                lib = _library_file(build_dir)
                if lib is not None:
                    lib.unlink()
    load()
    return build_info()


def _require() -> None:
    if not load():
        raise RuntimeError("artlib native CPU kernels are not available: " + reason())


# ---- the entry points the op layer calls ----------------------------------------------------------


def region_attention_core_forward(q: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Region-attention core, absorbed form: ``q`` (N, M, d) already scaled, ``x`` (N, L, d) ->
    ``a`` (N, M, d) in q's dtype and ``lse`` (N, M) in float32 (float64 for float64 input), as
    ``region_attention_core_ref``.

    Equivalent to ``s = q @ x.mT; a = s.softmax(-1) @ x; lse = s.logsumexp(-1)``.
    float16/bfloat16 inputs are computed in float32.
    """
    _require()
    return torch.ops.artlib.native_region_attention_core_fwd(q, x)


def region_attention_core_backward(
    da: Tensor, q: Tensor, x: Tensor, a: Tensor, lse: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward of :func:`region_attention_core_forward`: ``(dq (N, M, d), dx (N, L, d))``.

    dP = da x^T; delta_m = da_m . a_m; dS = P * (dP - delta); dq = dS x; dx = P^T da + dS^T q, with P
    recomputed from q, x and lse (float64 inputs with a float32 lse recompute each row's logsumexp).
    """
    _require()
    return torch.ops.artlib.native_region_attention_core_bwd(da, q, x, a, lse)


def mtc_loss_forward(
    r: Tensor, lam: float, hinge: bool, w_s: float, w_t: float, w_tr: float
) -> Tensor:
    """MTC loss (Eq. 5-8) of ``r`` (B, T, K, d) -> (4,) ``[total, spatial, temporal, tracklet]``,
    float32 (float64 for float64 input).

    Equivalent to ``torch.stack(mtc_loss_ref(r, lam, "hinge" if hinge else "linear", (w_s, w_t, w_tr)))``.
    """
    _require()
    return torch.ops.artlib.native_mtc_loss_fwd(
        r, float(lam), bool(hinge), float(w_s), float(w_t), float(w_tr)
    )


def mtc_loss_backward(
    grad: Tensor, r: Tensor, lam: float, hinge: bool, w_s: float, w_t: float, w_tr: float
) -> Tensor:
    """Gradient of ``grad . [total, spatial, temporal, tracklet]`` with respect to ``r``:
    (B, T, K, d) in r's dtype."""
    _require()
    return torch.ops.artlib.native_mtc_loss_bwd(
        grad, r, float(lam), bool(hinge), float(w_s), float(w_t), float(w_tr)
    )


def tracklet_aggregate_forward(r: Tensor, s: Tensor, tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """Saliency aggregation (Eq. 9): ``r`` (B, T, K, d), ``s`` (B, K, d) -> ``out`` (B, K, d) in r's
    dtype, and what the backward reuses: the softmax ``p`` (B, K, K, T) (``p[b, k, i, t]`` =
    softmax_t(<s_i, r_tk> / tau)) and the weights ``w`` (B, K, T), in float32 (float64 for float64).

    Equivalent to ``tracklet_aggregate_ref(r, s, "saliency", tau)``.
    """
    _require()
    return torch.ops.artlib.native_tracklet_aggregate_fwd(r, s, float(tau))


def tracklet_aggregate_backward(
    grad: Tensor, r: Tensor, s: Tensor, p: Tensor, w: Tensor, tau: float
) -> tuple[Tensor, Tensor]:
    """Gradient of :func:`tracklet_aggregate_forward` for ``grad`` (B, K, d): ``(dr, ds)`` in the
    dtypes of r and s, as ``tracklet_aggregate_backward_ref``."""
    _require()
    return torch.ops.artlib.native_tracklet_aggregate_bwd(grad, r, s, p, w, float(tau))
