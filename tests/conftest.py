"""Test setup. TRITON_INTERPRET must be set before any @triton.jit runs, so the Triton kernels run on
CPU tensors here (about 20 ms a program instance: keep grids small)."""

import os
import shutil
import tempfile

# torch.compile's cache (compiled kernels, precompiled headers) is this run's own, not the shared
# /tmp/torchinductor_$USER: another run's entries made a test fail to compile (a precompiled header
# of another CPU capability). Set TORCHINDUCTOR_CACHE_DIR to keep one across runs on purpose.
_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="artlib-inductor-"
    )

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # on a GPU machine the kernels run compiled (pytest -m gpu)
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def video_corpus(tmp_path_factory):
    """The edge-case corpus of tests/corpus.py, written once per run: {name: Case}."""
    pytest.importorskip("av")
    from corpus import build_corpus

    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def use_backend():
    """``use_backend(name, op=None, interpret=None)``: force an op's backend for the rest of the test
    (artlib.ops.use_backend, undone at the end), instead of editing ARTLIB_BACKEND*."""
    import contextlib

    from artlib.ops import use_backend as _use

    with contextlib.ExitStack() as stack:
        yield lambda name, op=None, interpret=None: stack.enter_context(
            _use(name, op, interpret=interpret)
        )


def pytest_unconfigure(config):
    if _INDUCTOR_CACHE is not None:
        shutil.rmtree(_INDUCTOR_CACHE, ignore_errors=True)
