"""Faults a run must survive, reproduced on real files and real processes: a second run on a busy
folder, a new run into an old folder, a killed agent's workers, a resume that changes the model, a
kill in the middle of a write, a truncated newest checkpoint (artlib.engine.rundir)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from artlib.engine.rundir import (
    LOCK_NAME,
    RunFolderBusy,
    RunFolderError,
    RunFolderLock,
    check_fresh,
    newest_intact_checkpoint,
    remove_stale_parts,
    resume_diff,
    set_parent_death_signal,
    truncate_metrics,
)
from tests.helpers import child_pids, process_gone, wait_gone

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _spawn(code: str, *args) -> subprocess.Popen:
    """A Python child running ``code``; it prints a line when ready (read with _ready)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ready(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The child's first stdout line (it says it is ready); its stderr if it died first."""
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line:
        proc.wait(max(1.0, deadline - time.monotonic()))
        raise AssertionError(f"child exited {proc.returncode} before ready: {proc.stderr.read()}")
    return line.strip()


HOLD_LOCK = """
    import sys, time
    from artlib.engine.rundir import RunFolderLock
    lock = RunFolderLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
"""


# ------------------------------------------------------------------------------------------ lock
def test_second_run_on_a_busy_folder_is_refused_and_a_killed_holder_frees_it(tmp_path):
    out = tmp_path / "run"
    holder = _spawn(HOLD_LOCK, out)
    try:
        assert _ready(holder) == "held"
        with pytest.raises(RunFolderBusy) as e:
            RunFolderLock(out).acquire()
        msg = str(e.value)
        assert "\n" not in msg, msg
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in msg, msg
        assert str(out) in msg and "--output-dir" in msg, msg
        # a second process is refused too (not only this one)
        other = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(out)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode != 0 and f"pid {holder.pid}" in other.stderr, other.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    # SIGKILL runs no cleanup, yet the lock is free: the OS dropped the flock with the process
    with RunFolderLock(out) as lock:
        assert lock.held
        assert f'"pid": {os.getpid()}' in (out / LOCK_NAME).read_text()
    assert (out / LOCK_NAME).read_text() == ""  # released: the file names no holder
    RunFolderLock(out).acquire().release()  # and can be taken again


# ------------------------------------------------------------------------------ fresh folder
def test_a_new_run_into_a_folder_that_holds_one_is_refused(tmp_path):
    out = tmp_path / "run"
    assert check_fresh(out, None) == []  # absent
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / LOCK_NAME).write_text("")
    assert check_fresh(out, None) == []  # only files a run does not write
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "checkpoint_epoch0001.pt").write_bytes(b"x")
    (out / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    (out / "events.out.tfevents.1.host").write_bytes(b"x")
    with pytest.raises(RunFolderError) as e:
        check_fresh(out, None)
    msg = str(e.value)
    assert "\n" not in msg and "--resume auto" in msg and "--overwrite" in msg, msg
    assert "checkpoints" in msg and "metrics.csv" in msg, msg
    assert check_fresh(out, "auto") == []  # a resume wants the folder's contents
    assert (out / "metrics.csv").exists()
    removed = check_fresh(out, None, overwrite=True)
    assert removed == ["checkpoints", "events.out.tfevents.1.host", "metrics.csv"]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "notes.txt"]
    assert check_fresh(out, None) == []


# ----------------------------------------------------------------------------- parent death
AGENT = """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
    print(child.pid, flush=True)
    time.sleep(600)
"""
WORKER = """
import sys, time
from artlib.engine.rundir import set_parent_death_signal
if {pdeathsig}:
    assert set_parent_death_signal()
print("worker ready", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
@pytest.mark.parametrize("pdeathsig", [True, False])
def test_a_killed_agent_leaves_no_orphan_worker(pdeathsig):
    agent = _spawn(AGENT, WORKER.format(pdeathsig=pdeathsig))
    worker = int(_ready(agent))
    assert _ready(agent) == "worker ready"  # the worker shares the agent's stdout
    try:
        agent.send_signal(signal.SIGKILL)
        agent.wait(30)
        if pdeathsig:
            assert wait_gone(worker, 10), f"worker {worker} outlived its agent by 10 s"
        else:  # the control: without the signal the orphan goes on (the fault this prevents)
            time.sleep(1.0)
            assert not process_gone(worker)
    finally:
        if not process_gone(worker):
            os.kill(worker, signal.SIGKILL)
        wait_gone(worker, 10)


def test_parent_death_signal_is_a_noop_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert set_parent_death_signal() is False


# -------------------------------------------------------------------------------- resume diff
def _cfg(**changes):
    cfg = {
        "preset": "synthetic",
        "data": {"num_frames": 8, "class_names": None, "crop_size": 32},
        "model": {"dim": 32, "heads": 2, "mtc_terms": ["a", "b"]},
        "optim": {"lr": 0.01, "epochs": 2, "amp": False},
        "run": {"resume": None, "output_dir": "out"},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


FIXED = {"data.num_frames", "data.class_names", "model.dim", "model.heads", "model.mtc_terms"}


def test_resume_refuses_a_model_or_data_change_naming_the_option_and_both_values():
    with pytest.raises(RunFolderError) as e:
        resume_diff(_cfg(), _cfg(model__dim=64, run__resume="auto"), FIXED)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--dim: ") and "with 32" in msg, msg
    assert "asks for 64" in msg, msg
    with pytest.raises(RunFolderError, match=r"^--class-names: .*None.*'names.txt'"):
        resume_diff(_cfg(), _cfg(data__class_names="names.txt"), FIXED)
    with pytest.raises(RunFolderError, match=r"^--mtc-terms: .*\['a', 'b'\].*\['a'\]"):
        resume_diff(_cfg(), _cfg(model__mtc_terms=["a"]), FIXED)
    # a flag table from the config's declarations names the option as the user typed it
    with pytest.raises(RunFolderError, match=r"^--synthetic-size: "):
        resume_diff(
            {"synthetic": {"size": 32}},
            {"synthetic": {"size": 64}},
            {"synthetic.size"},
            flag={"synthetic.size": "--synthetic-size"},
        )


def test_resume_returns_the_options_it_may_change():
    changed = resume_diff(
        _cfg(),
        _cfg(optim__lr=1e6, optim__epochs=5, run__resume="auto", model__mtc_terms=("a", "b")),
        FIXED,
    )
    assert changed == {"optim.epochs": (2, 5), "optim.lr": (0.01, 1e6)}
    assert resume_diff(_cfg(), _cfg(), FIXED) == {}
    # a bool is not the number 1: amp False -> True is a change, 0 -> False is too
    assert resume_diff(_cfg(), _cfg(optim__amp=True), FIXED) == {"optim.amp": (False, True)}
    assert resume_diff({"a": 0}, {"a": False}, set()) == {"a": (0, False)}
    # an option the checkpoint's artlib did not have is not compared
    new = _cfg()
    new["model"]["added_later"] = 1
    assert resume_diff(_cfg(), new, FIXED | {"model.added_later"}) == {}


# --------------------------------------------------------------------------- crash leftovers
def test_truncate_metrics_drops_later_epochs_and_a_half_written_row(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = "".join(f"{e},{1 / e:.3f}\r\n" for e in range(1, 5))
    path.write_bytes(f"epoch,loss\r\n{rows}5,0.2".encode())  # a kill in the middle of row 5
    assert truncate_metrics(path, 2) == 3
    assert path.read_bytes() == b"epoch,loss\r\n1,1.000\r\n2,0.500\r\n"
    assert truncate_metrics(path, 2) == 0  # already consistent: unchanged
    assert truncate_metrics(path, 0) == 2 and path.read_bytes() == b"epoch,loss\r\n"
    assert truncate_metrics(tmp_path / "absent.csv", 3) == 0
    (tmp_path / "odd.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(RunFolderError, match="no 'epoch' column"):
        truncate_metrics(tmp_path / "odd.csv", 1)


KILLED_MID_WRITE = """
    import sys, time
    from artlib._io import atomic_write
    with atomic_write(sys.argv[1], "wb") as fh:
        fh.write(b"half a checkpoint")
        fh.flush()
        print("writing", flush=True)
        time.sleep(600)
"""


def test_a_kill_mid_write_leaves_a_part_file_that_is_removed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    done = ckpts / "checkpoint_epoch0001.pt"
    done.write_bytes(b"whole")
    writer = _spawn(KILLED_MID_WRITE, ckpts / "checkpoint_epoch0002.pt")
    try:
        assert _ready(writer) == "writing"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    parts = sorted(ckpts.glob(".*.part"))
    assert len(parts) == 1 and parts[0].name.startswith(".checkpoint_epoch0002.pt.")
    assert not (ckpts / "checkpoint_epoch0002.pt").exists()  # never a half file under the name
    (tmp_path / ".metrics.csv.abc.part").write_text("x")
    removed = remove_stale_parts(tmp_path)
    assert sorted(p.name for p in removed) == sorted([parts[0].name, ".metrics.csv.abc.part"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoint_epoch0001.pt", "checkpoints"]
    assert done.read_bytes() == b"whole"


def _checkpoint(path: Path, epoch: int) -> None:
    torch.save(
        {"format": "artlib.checkpoint", "format_version": 1, "epoch": epoch, "w": torch.ones(256)},
        path,
    )


def test_resume_auto_falls_back_from_a_truncated_newest_checkpoint(tmp_path):
    assert newest_intact_checkpoint(tmp_path / "none") is None
    for epoch in (1, 2, 3):
        _checkpoint(tmp_path / f"checkpoint_epoch{epoch:04d}.pt", epoch)
    (tmp_path / "best.pt").write_bytes(b"not considered")
    path, state = newest_intact_checkpoint(tmp_path)
    assert path.name == "checkpoint_epoch0003.pt" and state["epoch"] == 3
    newest = tmp_path / "checkpoint_epoch0003.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a disk that filled up, a copy cut short
    warnings = []
    path, state = newest_intact_checkpoint(tmp_path, warn=warnings.append)
    assert path.name == "checkpoint_epoch0002.pt" and state["epoch"] == 2
    assert len(warnings) == 1 and str(newest) in warnings[0] and "\n" not in warnings[0]
    # every one unreadable: one line, naming them
    junk = bytes(range(255, -1, -1)) + bytes(44)  # fixed bytes: neither a zip nor a pickle
    for epoch in (1, 2):
        (tmp_path / f"checkpoint_epoch{epoch:04d}.pt").write_bytes(junk)
    with pytest.raises(RunFolderError) as e:
        newest_intact_checkpoint(tmp_path, warn=warnings.append)
    assert "\n" not in str(e.value) and "checkpoint_epoch0001.pt" in str(e.value)
    assert len(warnings) == 4


# ------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("content", ["random", "truncated", "empty"])
def test_an_unreadable_checkpoint_is_one_line_without_torch_advice(tmp_path, capsys, content):
    """evaluate, predict and convert on random bytes, a cut-short file and an empty one: one line,
    exit status non-zero, and never torch's advice to retry with weights_only=False."""
    from artlib.convert_checkpoint import main as convert_main
    from artlib.evaluate import main as evaluate_main
    from artlib.predict import main as predict_main

    path = tmp_path / "bad.pt"
    if content == "random":
        path.write_bytes(bytes(range(256)) * 16)  # fixed "random" bytes: 0x00 is no pickle opcode
    elif content == "truncated":
        torch.save({"w": torch.ones(4096)}, path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path.write_bytes(b"")
    runs = {
        "evaluate": lambda: evaluate_main(["--checkpoint", str(path), "--device", "cpu"]),
        "predict": lambda: predict_main(["--checkpoint", str(path), str(tmp_path / "v.mp4")]),
        "convert": lambda: convert_main([str(path), str(tmp_path / "new.pt"), "--trust"]),
    }
    for tool, run in runs.items():
        rc = run()
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert rc in (1, 2), (tool, rc, captured)
        assert err.count("\n") == 0 and err.startswith("error: "), (tool, err)
        assert str(path) in err and "Traceback" not in err, (tool, err)
        low = err.lower()
        assert "weights_only" not in low and "trusted source" not in low, (tool, err)
        assert "arbitrary code" not in low and "miniz" not in low, (tool, err)
    assert not (tmp_path / "new.pt").exists()


def test_torch_load_reason_keeps_the_reason_and_drops_the_advice(tmp_path):
    from artlib._io import torch_load_reason

    bad = tmp_path / "random.pt"
    bad.write_bytes(b"\xd8" * 64)
    with pytest.raises(Exception) as e:
        torch.load(bad, weights_only=True)
    assert "weights_only" in str(e.value)  # torch's own message carries the advice
    assert torch_load_reason(e.value) == "the safe unpickler stopped: Unsupported operand 216"

    torch.save({"x": Path("a")}, tmp_path / "custom.pt")  # a class outside the safe types
    with pytest.raises(Exception) as e:
        torch.load(tmp_path / "custom.pt", weights_only=True)
    reason = torch_load_reason(e.value)
    assert reason.startswith("the safe unpickler stopped: Unsupported global: GLOBAL "), reason
    assert "Path" in reason and "safe_globals" not in reason and "trust" not in reason, reason
    assert torch_load_reason(EOFError()) == "the file ends early (empty or cut short)"
    # a message that quotes torch's inside parentheses keeps them closed
    quoted = (
        "x.pt cannot be read (PytorchStreamReader failed reading zip archive: failed finding "
        "central directory. This is an internal miniz error. If you are seeing this error, there "
        "is a high likelihood that your checkpoint file is corrupted.)"
    )
    assert torch_load_reason(quoted) == (
        "x.pt cannot be read (PytorchStreamReader failed reading zip archive: failed finding "
        "central directory.)"
    )
    assert torch_load_reason(ValueError("plain: kept as it is")) == "plain: kept as it is"
    # artlib's own refusal keeps its advice (convert a file you trust), word for word
    from artlib.engine.checkpoint import UnsafeCheckpointError

    unsafe = UnsafeCheckpointError(tmp_path / "c.pt", ["posix.system"])
    assert torch_load_reason(unsafe) == str(unsafe)
    assert "--trust" in str(unsafe) and "If you trust" in str(unsafe)


def test_resume_fixed_keys_are_options_of_the_trainer():
    from artlib.engine.config import RESUME_FIXED, TrainConfig, config_to_dict, options

    keys = {o.key for o in options()}
    assert RESUME_FIXED <= keys, sorted(RESUME_FIXED - keys)
    flags = {o.key: o.flag for o in options()}
    saved = config_to_dict(TrainConfig())
    new = config_to_dict(TrainConfig())
    new["model"]["dim"] = saved["model"]["dim"] * 2
    with pytest.raises(RunFolderError, match=r"^--dim: the checkpoint was trained with 256"):
        resume_diff(saved, new, RESUME_FIXED, flag=flags)
    new = config_to_dict(TrainConfig())
    new["optim"]["lr"], new["run"]["resume"] = 1e6, "auto"
    assert resume_diff(saved, new, RESUME_FIXED, flag=flags) == {"optim.lr": (0.01, 1e6)}


def test_a_resume_of_a_run_that_predates_an_option_compares_its_value_then():
    """A checkpoint written before --attn-temperature existed was trained at t = 1: resuming it
    under the small preset's t = 0.25 refuses; at t = 1 nothing changes."""
    from artlib.engine.config import RESUME_FIXED, TrainConfig, config_to_dict, with_absent

    saved = config_to_dict(TrainConfig())
    del saved["model"]["attn_temperature"]
    new = config_to_dict(TrainConfig())
    assert resume_diff(with_absent(saved), new, RESUME_FIXED) == {}
    new["model"]["attn_temperature"] = 0.25
    assert resume_diff(saved, new, RESUME_FIXED) == {}  # unfilled: the change would pass
    with pytest.raises(RunFolderError, match=r"^--attn-temperature: the checkpoint was trained "
                       r"with 1\.0, this run asks for 0\.25"):  # fmt: skip
        resume_diff(with_absent(saved), new, RESUME_FIXED)
    assert "attn_temperature" not in saved["model"]  # the saved config is not modified


# --------------------------------------------------------------- the trainer, end to end
SCRIPT = str(REPO / "examples" / "train_finegym.py")
TINY = [
    *("--synthetic-classes", "4", "--synthetic-train-per-class", "4"),
    *("--synthetic-val-per-class", "2", "--synthetic-size", "32", "--num-frames", "4"),
    *("--crop-size", "32", "--batch-size", "4", "--workers", "0", "--dim", "32", "--heads", "2"),
    *("--no-progress", "--seed", "1"),
]


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.pt"
    torch.save({"bank": torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))}, path)
    return str(path)


def _train(out: Path, bank: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, SCRIPT, *TINY, "--bank", bank, "--output-dir", str(out), *args]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=REPO)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr}")
    return res


def _one_error_line(res: subprocess.CompletedProcess, code: int) -> str:
    """The run exited ``code`` with one error line on stderr and no traceback; -> that line."""
    errors = [ln for ln in res.stderr.splitlines() if ": error: " in ln or "interrupted" in ln]
    assert res.returncode == code and len(errors) == 1, (res.returncode, res.stderr[-4000:])
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    return errors[0]


def _epochs_in_metrics(out: Path) -> list[int]:
    import csv

    with open(out / "metrics.csv", newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_trainer_refuses_a_busy_folder_and_an_old_run_with_one_line(tmp_path, bank):
    out = tmp_path / "run"
    holder = _spawn(HOLD_LOCK, out)
    try:
        assert _ready(holder) == "held"
        line = _one_error_line(_train(out, bank, "--epochs", "1", check=False), 2)
        assert f"in use by another run (pid {holder.pid} on host" in line, line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    (out / "metrics.csv").write_text("epoch,train_total\n1,2.0\n")
    line = _one_error_line(_train(out, bank, "--epochs", "1", check=False), 2)
    assert "already holds a run (metrics.csv)" in line and "--resume auto" in line, line
    assert (out / "metrics.csv").read_text() == "epoch,train_total\n1,2.0\n"  # left alone
    # --overwrite replaces the old run's outputs and keeps files artlib did not write
    (out / "notes.txt").write_text("mine")
    res = _train(out, bank, "--epochs", "1", "--overwrite")
    assert "--overwrite: removed the earlier run's metrics.csv" in res.stderr, res.stderr[-3000:]
    assert _epochs_in_metrics(out) == [1] and (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_resume_auto_after_a_kill_mid_write_falls_back_applies_lr_and_refuses_dim(tmp_path, bank):
    """A 2-epoch run, then the state a kill during epoch 2's checkpoint leaves at its worst: the
    newest checkpoint cut short, a .part file, epoch 2's row and a half-written row in
    metrics.csv. ``--resume auto --lr 0.01`` skips the cut checkpoint with a warning naming it,
    resumes from epoch 1, removes the .part file, writes each epoch once, trains at the new lr
    and records it; a changed --dim is refused with one line."""
    out = tmp_path / "run"
    _train(out, bank, "--epochs", "2")
    assert _epochs_in_metrics(out) == [1, 2]
    ckpt = out / "checkpoints"
    newest = ckpt / "checkpoint_epoch0002.pt"
    newest.write_bytes(newest.read_bytes()[:4000])
    part = ckpt / ".checkpoint_epoch0003.pt.k1ll3d.part"
    part.write_bytes(b"\0" * 100)
    with open(out / "metrics.csv", "a") as fh:
        fh.write("3,1.0")  # a row cut short by the kill
    res = _train(out, bank, "--epochs", "2", "--resume", "auto", "--lr", "0.01")
    warn = [ln for ln in res.stderr.splitlines() if "WARNING" in ln and "skipping" in ln]
    assert len(warn) == 1 and str(newest) in warn[0], res.stderr[-4000:]
    assert "resumed from epoch 1" in res.stderr and "--lr 0.002 -> 0.01" in res.stderr, res.stderr
    assert not part.exists() and ".part" in res.stderr
    assert _epochs_in_metrics(out) == [1, 2]  # no epoch twice, no cut row
    state = torch.load(newest, weights_only=True)  # rewritten whole
    assert state["epoch"] == 2 and state["config"]["optim"]["lr"] == 0.01
    groups = state["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.01] * len(groups), groups
    assert state["scheduler"]["base_lrs"] == [0.01] * len(groups)
    # the lr of epoch 2 (0-based 1, the cosine's end of 2 epochs with 1 warm-up: 0.01 * 1.0)
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert float(rows[2].split(",")[header.index("lr")]) == pytest.approx(0.01), rows
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.01
    # options that define the model or the data refuse, naming the option and both values
    line = _one_error_line(_train(out, bank, "--resume", "auto", "--dim", "64", check=False), 2)
    assert "--dim: the checkpoint was trained with 32, this run asks for 64" in line, line


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_sigkill_of_the_torchrun_agent_leaves_no_orphan_worker(tmp_path, bank):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [SCRIPT, *TINY, "--bank", bank, "--epochs", "50", "--output-dir", str(out)]
    # the agent's and the workers' stderr in a file: a pipe nobody reads while the test waits
    # could fill and block them, and the file says what they did when a check fails
    log = tmp_path / "torchrun.log"
    with open(log, "w") as fh:
        agent = subprocess.Popen(
            cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=fh, text=True
        )
    workers: list[int] = []
    try:
        # both ranks are past the process group's start (rank 0 then takes the lock): each has
        # set its parent-death signal by then
        deadline = time.monotonic() + 300
        lock = out / LOCK_NAME
        while time.monotonic() < deadline and agent.poll() is None:
            if lock.is_file() and lock.read_text().strip():
                break
            time.sleep(0.1)
        workers[:] = child_pids(agent.pid)
        assert agent.poll() is None and len(workers) == 2, (
            f"workers {workers}, agent exit {agent.poll()}, lock file "
            f"{lock.read_text() if lock.is_file() else 'absent'!r}\n{log.read_text()[-4000:]}"
        )
        agent.send_signal(signal.SIGKILL)
        agent.wait(30)
        # the kernel sends SIGKILL at once; the bound only leaves room for a loaded machine
        left = [pid for pid in workers if not wait_gone(pid, 30)]
        assert not left, (
            f"workers {left} still run 30 s after their agent was killed\n{log.read_text()[-4000:]}"
        )
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait(30)
        for pid in workers:  # orphans of a failed check: not left running
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
    # no one holds the folder any more (a dying process's leader shows as a zombie while its
    # other threads still exit; the lock goes with the last of them: a moment's wait, longer
    # when the machine is loaded)
    deadline = time.monotonic() + 60
    while True:
        try:
            RunFolderLock(out).acquire().release()
            break
        except RunFolderBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.slow
def test_a_refusal_under_torchrun_reaches_every_rank(tmp_path, bank):
    """Rank 0 refuses the folder; rank 1 does not wait for it: each rank says the one line and
    exits 2 (torchrun's own report of the failed workers follows)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch\n1\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [SCRIPT, *TINY, "--bank", bank, "--epochs", "1", "--output-dir", str(out)]
    res = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if "error: --output-dir" in ln]
    assert res.returncode != 0 and len(lines) == 2, res.stderr[-4000:]
    assert {ln.split(":")[0] for ln in lines} == {
        "train_finegym.py [rank 0]",
        "train_finegym.py [rank 1]",
    }, lines
    assert all("already holds a run" in ln for ln in lines), lines


def _start_until_first_checkpoint(cmd: list[str], out: Path, **popen) -> subprocess.Popen:
    """Start a training command; return it, still running, once epoch 1's checkpoint exists."""
    proc = subprocess.Popen(
        cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )
    first = out / "checkpoints" / "checkpoint_epoch0001.pt"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None and first.exists():
        return proc
    if proc.poll() is None:  # past the deadline: stopped (its workers too), to read its output
        if popen.get("start_new_session"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    stderr = proc.communicate(timeout=60)[1]
    raise AssertionError(
        f"{first} {'exists' if first.exists() else 'absent'}, exit {proc.returncode} "
        f"(None: still running after 300 s)\n{stderr[-4000:]}"
    )


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_a_resumable_folder(tmp_path, bank):
    out = tmp_path / "run"
    cmd = [sys.executable, SCRIPT, *TINY, "--bank", bank, "--epochs", "50", "--output-dir"]
    proc = _start_until_first_checkpoint([*cmd, str(out)], out)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    line = _one_error_line(res, 130)
    assert "--resume auto" in line and str(out) in line, line
    RunFolderLock(out).acquire().release()
    path, state = newest_intact_checkpoint(out / "checkpoints")
    assert state["epoch"] >= 1


@pytest.mark.slow
def test_ctrl_c_under_artlib_torchrun_is_one_line_per_process(tmp_path, bank):
    """Ctrl-C reaches the agent's process group (as a terminal sends it): each of the two workers
    says where it stopped, the launcher says it stopped, no process prints a traceback, and the
    folder resumes. Plain torchrun's agent ends the same stop with a SignalException traceback."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "artlib.launch", "--standalone", "--nproc_per_node=2"]
    cmd += [SCRIPT, *TINY, "--bank", bank, "--epochs", "50", "--output-dir", str(out)]
    agent = _start_until_first_checkpoint(cmd, out, start_new_session=True)
    os.killpg(agent.pid, signal.SIGINT)
    try:
        stdout, stderr = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode == 130, (agent.returncode, stderr[-4000:])
    assert "Traceback" not in stderr and "SignalException" not in stderr, stderr[-4000:]
    launcher = [ln for ln in stderr.splitlines() if ln.startswith("artlib-torchrun: stopped by")]
    workers = [ln for ln in stderr.splitlines() if "interrupted" in ln]
    assert launcher == [
        "artlib-torchrun: stopped by SIGINT; the workers were stopped (an artlib run's folder "
        "resumes with --resume auto)"
    ], stderr[-4000:]
    assert sorted(ln.split(":")[0] for ln in workers) == [
        "train_finegym.py [rank 0]",
        "train_finegym.py [rank 1]",
    ], stderr[-4000:]
    assert "Received" not in stderr and "closing signal" not in stderr, stderr[-4000:]
    RunFolderLock(out).acquire().release()
    path, state = newest_intact_checkpoint(out / "checkpoints")
    assert state["epoch"] >= 1, path


def test_a_worker_interrupted_twice_says_one_line_and_no_traceback(tmp_path):
    """torchrun's agent passes the terminal's Ctrl-C on to a worker that already has it: once the
    worker reports the interrupt, a second SIGINT or SIGTERM (before it exits, or while it
    exits) changes nothing: one line, exit 130."""
    code = textwrap.dedent(
        """
        import os, signal, sys, types
        from artlib.engine.cli import run_guarded

        def fn():
            raise KeyboardInterrupt

        cfg = types.SimpleNamespace(run=types.SimpleNamespace(output_dir="OUT"))
        rc = run_guarded(cfg, fn, "w.py")
        os.kill(os.getpid(), signal.SIGINT)  # the agent's copy of the same Ctrl-C
        os.kill(os.getpid(), signal.SIGTERM)
        sys.exit(rc)
        """
    )
    env = dict(ENV, LOCAL_RANK="1", RANK="1")
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.splitlines() == [
        "w.py [rank 1]: interrupted; OUT keeps the last epoch's checkpoint: continue with "
        "--resume auto"
    ], res.stderr


def test_launch_finds_nproc_per_node_only_among_torchruns_own_arguments():
    from artlib.launch import _nproc_per_node

    assert _nproc_per_node(["--nproc_per_node=8", "train.py"]) == "8"
    assert _nproc_per_node(["--standalone", "--nproc-per-node", "2", "-m", "x"]) == "2"
    assert _nproc_per_node(["--nnodes", "1", "--nproc_per_node", "2", "train.py"]) == "2"
    assert _nproc_per_node(["train.py", "--nproc_per_node=4"]) is None  # the script's argument
    assert _nproc_per_node(["-m", "artlib.engine.cli", "--nproc_per_node=4"]) is None


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    import errno

    from artlib.engine import checkpoint as ck

    files = ck.CheckpointManager(tmp_path / "checkpoints")
    files.save({"epoch": 1}, 1)

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.shutil, "copyfileobj", full)  # best.pt's copy
    with pytest.raises(ck.CheckpointWriteError) as e:
        files.save({"epoch": 2}, 2, best=True)
    msg = str(e.value)
    assert "\n" not in msg and "best.pt (No space left on device)" in msg, msg
    assert "--resume auto" in msg
    monkeypatch.setattr(ck, "atomic_save_torch", full)  # the epoch's checkpoint itself
    with pytest.raises(ck.CheckpointWriteError, match=r"checkpoint_epoch0003\.pt \(No space"):
        files.save({"epoch": 3}, 3)
    assert torch.load(files.path(1), weights_only=True) == {"epoch": 1}  # intact


def test_a_non_finite_loss_is_one_line_naming_the_step_and_the_flags():
    from artlib.engine.trainer import LossMeter

    meter = LossMeter(epoch=2)
    meter.add({"total": torch.tensor(float("nan")), "con": torch.tensor(1.0)}, 4)
    with pytest.raises(FloatingPointError) as e:
        meter.read(7)
    msg = str(e.value)
    assert "\n" not in msg and "epoch 3, step 7" in msg and "total=nan" in msg, msg
    assert "--lr" in msg and "--grad-clip" in msg and "--check-inputs" in msg, msg


def test_a_list_where_the_config_expects_one_value_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: [0.1, 0.2]\nrun:\n  output_dir: [a]\n")
    res = subprocess.run(
        [sys.executable, SCRIPT, "--config", str(cfg), "--print-config"],
        env=ENV, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "expected one" in res.stderr and "[" in res.stderr, res.stderr


def test_a_resume_onto_other_class_names_is_one_line_naming_both(tmp_path):
    from artlib.engine.checkpoint import Checkpointer
    from artlib.engine.config import TrainConfig
    from artlib.engine.model import build_model
    from artlib.engine.optim import build_optimizer

    cfg = TrainConfig()
    cfg.model.backbone, cfg.model.text_model, cfg.model.dim, cfg.model.heads = (
        "tiny_cnn", "random", 32, 2,
    )  # fmt: skip
    cfg.data.num_frames, cfg.data.crop_size = 4, 32

    def checkpointer(names):
        model = build_model(cfg, names)
        opt, sched = build_optimizer(cfg, model)
        return Checkpointer(tmp_path, cfg=cfg, class_names=names, model=model, optimizer=opt,
                            scheduler=sched)  # fmt: skip

    checkpointer(["jump", "turn", "flip"]).save(1, 0.5)
    with pytest.raises(RunFolderError) as e:
        checkpointer(["jump", "turn", "split"]).resume("auto")
    msg = str(e.value)
    assert "\n" not in msg and "3 classes (jump, turn, flip)" in msg, msg
    assert "has 3 (jump, turn, split)" in msg, msg
