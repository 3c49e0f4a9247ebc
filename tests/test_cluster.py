"""Two nodes on one machine: two torchrun agents (``--nnodes=2``, c10d rendezvous on 127.0.0.1,
one CPU process each, gloo) train the tiny synthetic set, then the same two agents continue the
run with ``--resume auto``; the SLURM batch script launches that way and requeues itself on its
time-limit signal (docs/cluster.md, examples/slurm/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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
    """A free port for the rendezvous, chosen below the kernel's ephemeral range: the agents bind
    it seconds later (after importing torch), and a port from that range (what ``bind(0)`` gives)
    can be handed in the meantime to any process's outgoing connection or ``bind(0)`` on a busy
    machine; then both agents find it taken and wait for a rendezvous host that never comes. A
    port outside the range is only taken by a process that names it. The start of the search
    depends on the pid, so concurrent test runs try different ports."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default start of the range
    first, last = 10000, low - 1  # above the well-known and most registered services' ports
    if last - first < 1000:  # an unusual range: take what the kernel gives
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    span = last - first + 1
    start = os.getpid() * 7919 % span
    for i in range(200):
        port = first + (start + i * 97) % span
        with socket.socket() as s:
            try:
                s.bind(("", port))  # every address: the store's server may listen on all of them
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port among 200 tried in [{first}, {last}]")


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


def test_slurm_script_requeues_on_the_time_limit_signal(tmp_path):
    """examples/slurm/train_finegym.sbatch with stand-ins for srun and scontrol: it launches one
    torchrun agent per node with c10d rendezvous on the first node and --resume auto, and on USR1
    (what --signal=B:USR1@300 sends) it requeues its own job id and exits 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, launched = tmp_path / "scontrol.log", tmp_path / "srun.args"
    (bin_dir / "scontrol").write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = show ]; then printf "node1\\nnode2\\n"; exit 0; fi\n'
        f'echo "$@" >> {calls}\n'
    )
    (bin_dir / "srun").write_text(f'#!/usr/bin/env bash\necho "$@" > {launched}\nexec sleep 60\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="42",
        SLURM_JOB_NAME="art",
        SLURM_JOB_NODELIST="node[1-2]",
        SLURM_NNODES="2",
    )
    script = REPO / "examples" / "slurm" / "train_finegym.sbatch"
    job = subprocess.Popen(
        ["bash", str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (
            not (launched.exists() and launched.read_text())
            and job.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        if not launched.exists():  # the script's own output says where it stopped
            if job.poll() is None:
                job.kill()
            raise AssertionError(
                f"srun was never called (exit {job.wait()}):\n{job.communicate()[0]}"
            )
        job.send_signal(signal.SIGUSR1)
        out, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    args = launched.read_text().split()
    assert job.returncode == 0, out
    assert "requeueing job 42" in out, out
    assert calls.read_text().split() == ["requeue", "42"], calls.read_text()
    for flag in ("--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=node1:29500",
                 "--rdzv_id=42"):  # fmt: skip
        assert flag in args, args
    i = args.index("--resume")
    assert args[i + 1] == "auto" and args[args.index("--lr") + 1] == "0.01", args
