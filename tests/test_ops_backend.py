"""artlib.ops' backend choice: made once per (op, device type) from ARTLIB_BACKEND* (read once),
overridden by use_backend / set_backend, and reported by backend()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import artlib.ops as ops
from artlib.ops import _backend

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> list:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def test_use_backend_overrides_and_restores():
    before = ops.backend("mtc_loss", "cpu")
    with ops.use_backend("reference", "mtc_loss"):
        assert ops.backend("mtc_loss", "cpu") == "reference"
        with ops.use_backend("auto"):  # an op's own override wins over one for every op
            assert ops.backend("mtc_loss", "cpu") == "reference"
        assert ops.backend("tracklet_aggregate", "cpu") == _backend.select(
            "tracklet_aggregate", "cpu"
        )
    assert ops.backend("mtc_loss", "cpu") == before


def test_set_backend_and_its_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("fast")
    ops.set_backend("reference", "tracklet_aggregate")
    try:
        assert ops.backend("tracklet_aggregate", "cpu") == "reference"
    finally:
        ops.set_backend(None, "tracklet_aggregate")


def test_forced_triton_without_cuda_says_why():
    if not ops.triton_available():
        pytest.skip("triton not installed")
    with ops.use_backend("triton", "mtc_loss", interpret=False):
        with pytest.raises(RuntimeError, match="CUDA"):
            ops.backend("mtc_loss", "cpu")
        with pytest.raises(RuntimeError, match="CUDA"):
            ops.mtc_loss(torch.randn(2, 3, 4, 5))


def test_environment_is_read_once():
    """ARTLIB_BACKEND_<OP> decides on the first call; editing the environment later changes nothing
    until reset(); a bad value names the variable."""
    code = """
import json, os
from artlib.ops import _backend, backend
res = [backend("mtc_loss", "cpu")]
os.environ["ARTLIB_BACKEND_MTC_LOSS"] = "triton"
res.append(backend("mtc_loss", "cpu"))
os.environ["ARTLIB_BACKEND_MTC_LOSS"] = "bogus"
_backend.reset()
try:
    backend("mtc_loss", "cpu")
except ValueError as exc:
    res.append(str(exc))
print("RESULT", json.dumps(res))
"""
    res = _run(code, ARTLIB_BACKEND_MTC_LOSS="reference")
    assert res[:2] == ["reference", "reference"], res
    assert "ARTLIB_BACKEND_MTC_LOSS" in res[2] and "bogus" in res[2], res


def test_form_ratio_follows_the_backend():
    """region_attention_form's crossover is derived from the backend choice and forgotten with it."""
    with ops.use_backend("reference", "region_attention"):
        assert ops.region_attention_form(16, 256, 8, "cpu") == "standard"  # reference: 0.45
        assert ops.region_attention_form(12, 256, 8, "cpu") == "absorbed"
