"""Two nodes on one machine: two torchrun agents (``--nnodes=2``, c10d rendezvous on 127.0.0.1,
one CPU process each, gloo) train the tiny synthetic set, then the same two agents continue the
run with ``--resume auto`` (docs/cluster.md, examples/slurm/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "examples" / "train_finegym.py")
TINY = [
    "--synthetic-classes", "4", "--synthetic-train-per-class", "2", "--synthetic-val-per-class",
    "1", "--synthetic-size", "32", "--num-frames", "4", "--crop-size", "32", "--batch-size", "2",
    "--workers", "0", "--dim", "32", "--heads", "2", "--se-layers", "1", "--act-layers", "1",
    "--no-progress", "--seed", "1", "--device", "cpu",
]  # fmt: skip
TIMEOUT = 600  # s, per run of the two agents: generous for a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logs(log_dir: Path) -> str:
    """Every worker's stdout and stderr that torchrun wrote under ``log_dir`` (--redirects 3)."""
    parts = []
    for f in sorted(log_dir.rglob("*.log")):
        text = f.read_text(errors="replace")
        parts.append(f"--- {f.relative_to(log_dir)} ---\n{text[-6000:]}")
    return "\n".join(parts) or f"(no worker logs under {log_dir})"


def _two_nodes(tmp: Path, name: str, flags: list[str]) -> dict[str, str]:
    """Run two agents to the end -> {"stdout", "stderr"} of all workers, joined (rank 0's among
    them). Fails with both agents' output and every worker log."""
    port = _free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        ARTLIB_BACKEND="reference",  # no native build: the test is about the launch
        ARTLIB_CACHE=str(tmp / "cache"),
        MPLCONFIGDIR=str(tmp / "mpl"),
    )
    agents, logs = [], []
    for node in range(2):
        log_dir = tmp / f"{name}-logs" / f"node{node}"
        log_dir.mkdir(parents=True)
        logs.append(log_dir)
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes=2", "--nproc_per_node=1",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={name}",
            "--max_restarts=0", "--log-dir", str(log_dir), "--redirects", "3",
            SCRIPT, *TINY, *flags,
        ]  # fmt: skip
        agents.append(
            subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )  # fmt: skip
        )
    outputs, codes = [], []
    for agent in agents:
        try:
            out, _ = agent.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for a in agents:  # the agents and their workers: each agent leads its own group
                if a.poll() is None:
                    os.killpg(a.pid, signal.SIGKILL)
            out, _ = agent.communicate()
            out += f"\n(killed after {TIMEOUT} s)"
        outputs.append(out)
        codes.append(agent.returncode)
    if codes != [0, 0]:
        report = "\n".join(
            f"=== agent {i}: exit {c} ===\n{o[-4000:]}\n{_logs(d)}"
            for i, (c, o, d) in enumerate(zip(codes, outputs, logs))
        )
        raise AssertionError(f"{name}: the agents exited {codes}\n{report}")
    joined = {}
    for stream in ("stdout", "stderr"):
        joined[stream] = "\n".join(f.read_text() for d in logs for f in d.rglob(f"{stream}.log"))
    joined["all"] = _logs(tmp / f"{name}-logs")
    return joined


@pytest.mark.slow
def test_two_nodes_c10d_train_then_resume(tmp_path):
    out = tmp_path / "run"
    first = _two_nodes(tmp_path, "first", ["--epochs", "1", "--output-dir", str(out)])
    assert "cpu x2" in first["stderr"], first["all"]  # one run of 2 processes, not 2 runs of 1
    assert first["stdout"].count("FINAL ART top1=") == 1, first["all"]  # rank 0 only
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("checkpoint_epoch*.pt"))
    assert ckpts == ["checkpoint_epoch0001.pt"], (ckpts, first["all"])

    flags = ["--epochs", "2", "--output-dir", str(out), "--resume", "auto"]
    second = _two_nodes(tmp_path, "second", flags)
    assert "resumed from epoch 1" in second["stderr"], second["all"]
    assert second["stdout"].count("FINAL ART top1=") == 1, second["all"]
    state = torch.load(out / "checkpoints" / "checkpoint_epoch0002.pt", weights_only=True)
    assert state["epoch"] == 2
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3, rows  # header + epoch 1 (first run) + epoch 2 (resumed)
