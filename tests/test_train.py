"""The trainer end to end on a tiny synthetic set: 2 CPU ranks through torchrun, checkpoints and
resume, kill-and-resume equals an uninterrupted run (deterministic mode), bad flags."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "examples" / "train_finegym.py")

TINY = [
    "--synthetic-classes",
    "4",
    "--synthetic-train-per-class",
    "4",
    "--synthetic-val-per-class",
    "2",
    "--synthetic-size",
    "32",
    "--num-frames",
    "4",
    "--crop-size",
    "32",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--dim",
    "32",
    "--heads",
    "2",
    "--no-progress",
    "--seed",
    "1",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    bank = cache / "bank.pt"
    torch.save({"bank": torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))}, bank)
    e = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return e, str(bank)


def _run(cmd, env, extra_env=None, check=True):
    e = dict(env, **(extra_env or {}))
    res = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600, cwd=REPO)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{cmd} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-20000:]}"
        )
    return res


def _ckpts(out: Path):
    return sorted(p.name for p in (out / "checkpoints").glob("checkpoint_epoch*.pt"))


def _worker_logs(log_dir: Path) -> str:
    """Every file torchrun wrote under ``--log-dir`` (the workers' stdout/stderr), newest last, for
    an assertion message: a failed run keeps what each rank printed."""
    parts = []
    for f in sorted(log_dir.rglob("*"), key=lambda p: (p.stat().st_mtime, str(p))):
        if f.is_file():
            text = f.read_text(errors="replace")
            parts.append(f"--- {f.relative_to(log_dir)} ---\n{text[-6000:]}")
    return "\n".join(parts) or f"(no worker logs under {log_dir})"


def _torchrun(args, env, log_dir: Path, extra_env=None):
    """Run ``torchrun --nproc_per_node=2`` with each worker's stdout and stderr teed into
    ``log_dir``; on a non-zero exit the AssertionError carries the agent's output and every worker's
    log (the agent alone only says 'exited 1')."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",  # a free port: tests may run beside other torchrun jobs
        "--log-dir",
        str(log_dir),
        "--tee",
        "3",  # stdout and stderr of every rank: in the log files and on the agent's streams
        *args,
    ]
    res = _run(cmd, env, extra_env, check=False)
    if res.returncode != 0:
        raise AssertionError(
            f"{cmd} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-8000:]}\n"
            f"worker logs:\n{_worker_logs(log_dir)}"
        )
    return res


def test_torchrun_two_cpu_ranks_checkpoint_and_resume(env, tmp_path):
    e, bank = env
    out = tmp_path / "ddp"
    # its own cache (the synthetic set is written here, not into a cache other runs share) and a
    # failure budget for what this test checks, DDP checkpoints and resume, not the decoder: one
    # unreadable clip of the 4 per rank in an epoch does not fail it (0.1 allowed none)
    own = {"ARTLIB_CACHE": str(tmp_path / "cache")}
    run_args = [SCRIPT, *TINY, "--bank", bank, "--max-failure-fraction", "0.25"]
    res = _torchrun([*run_args, "--epochs", "2", "--output-dir", str(out)], e, tmp_path / "l1", own)
    assert "FINAL ART" in res.stdout, res.stdout[-2000:] + _worker_logs(tmp_path / "l1")
    # the lr of the global batch, stated at start: 4 per rank x 2 ranks
    assert "INFO lr 0.002 for a global batch of 8 (4 per rank x 2 ranks" in res.stderr, res.stderr[
        -3000:
    ]
    assert _ckpts(out) == ["checkpoint_epoch0001.pt", "checkpoint_epoch0002.pt"]
    assert (out / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert (out / "confusion.png").stat().st_size > 0
    # resume: one more epoch starts from epoch 2's checkpoint
    res = _torchrun(
        [*run_args, "--epochs", "3", "--output-dir", str(out), "--resume", "auto"],
        e,
        tmp_path / "l2",
        own,
    )
    assert "resumed from epoch 2" in res.stderr, res.stderr[-3000:] + _worker_logs(tmp_path / "l2")
    assert _ckpts(out)[-1] == "checkpoint_epoch0003.pt"
    state = torch.load(out / "checkpoints" / "checkpoint_epoch0003.pt", weights_only=True)
    assert state["epoch"] == 3 and "bank.agent" in "".join(state["model"])
    backbone = torch.load(out / "backbone.pt", weights_only=True)  # for a later --pretrained
    assert backbone and all(
        torch.equal(v, state["model"][f"backbone.{k}"]) for k, v in backbone.items()
    )
    # the tracklets of that checkpoint drawn over a video (examples/visualize_tracklets.py)
    import numpy as np

    from artlib.data._write import write_video
    from artlib.data.synthetic import render_clip

    video = tmp_path / "clip.mp4"
    write_video(str(video), render_clip(1, np.random.default_rng(0), 16, (32, 32))[0], fps=16)
    png = tmp_path / "tracklets.png"
    viz = str(REPO / "examples" / "visualize_tracklets.py")
    ckpt = str(out / "checkpoints" / "checkpoint_epoch0003.pt")
    res = _run(
        [sys.executable, viz, "--checkpoint", ckpt, "--video", str(video), "--out", str(png)], e
    )
    assert "2 tracklets x 4 frames" in res.stdout and png.stat().st_size > 10_000, res.stdout


def test_kill_and_resume_matches_uninterrupted_run(env, tmp_path):
    e, bank = env
    base = [sys.executable, SCRIPT, *TINY, "--bank", bank, "--epochs", "2", "--deterministic"]
    base += ["--model-ema", "0.9"]  # the weight average is restored too
    # a fresh matplotlib config folder: matplotlib logs "generated new fontManager" (INFO) when it
    # builds its font cache, which must not reach the run's output
    mpl = {"MPLCONFIGDIR": str(tmp_path / "mpl")}
    res = _run(base + ["--output-dir", str(tmp_path / "straight"), "--progress"], e, mpl)
    first_log = next(line for line in res.stderr.splitlines() if " INFO " in line)
    assert "INFO preset small: the small recipe on the built-in synthetic set" in first_log
    _check_logs_of_a_run_without_terminal(res, tmp_path / "straight")
    # SIGKILL as soon as epoch 1's checkpoint is there, like an out-of-memory kill or a
    # pre-empted node (the checkpoint is written to a temporary name, then renamed)
    first = tmp_path / "killed" / "checkpoints" / "checkpoint_epoch0001.pt"
    log = tmp_path / "killed.log"  # its stderr, for the messages below
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            base + ["--output-dir", str(tmp_path / "killed")],
            env=e,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, (proc.returncode, log.read_text()[-4000:])
    assert _ckpts(tmp_path / "killed") == ["checkpoint_epoch0001.pt"], (
        _ckpts(tmp_path / "killed"),
        log.read_text()[-4000:],
    )
    _run(base + ["--output-dir", str(tmp_path / "killed"), "--resume", "auto"], e)
    a = torch.load(tmp_path / "straight/checkpoints/checkpoint_epoch0002.pt", weights_only=True)
    b = torch.load(tmp_path / "killed/checkpoints/checkpoint_epoch0002.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after kill + resume"
    assert torch.equal(a["model"]["head.bank.S"], b["model"]["head.bank.S"])
    ema_a, ema_b = a["model_ema"], b["model_ema"]
    assert ema_a["updates"] == ema_b["updates"] == 2 * 4  # 2 epochs x 16 clips / batch 4
    for k in ema_a["module"]:
        assert torch.equal(ema_a["module"][k], ema_b["module"][k]), f"EMA {k} differs"
    # with --model-ema the average, not the last weights, is exported for a later --pretrained
    backbone = torch.load(tmp_path / "killed" / "backbone.pt", weights_only=True)
    assert all(torch.equal(v, ema_a["module"][f"backbone.{k}"]) for k, v in backbone.items())
    assert not all(torch.equal(v, a["model"][f"backbone.{k}"]) for k, v in backbone.items())


def _check_logs_of_a_run_without_terminal(res, out: Path):
    """Output to a pipe: no progress bar, one plain line per log interval (4 steps, --log-every
    5: the epoch's last step), nothing from other libraries' loggers, the FINAL line last; the
    per-interval TensorBoard scalars."""
    assert "\r" not in res.stderr and "it/s" not in res.stderr, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if "INFO epoch 1/2 step" in ln]
    assert len(lines) == 1 and "step 4/4 " in lines[0], res.stderr[-3000:]
    for key in ("total=", "con=", "lr=", "clips_per_s=", "data_s=", "step_s="):
        assert key in lines[0], lines[0]
    assert "fontManager" not in res.stderr + res.stdout
    assert res.stdout.strip().splitlines()[-1].startswith("FINAL ART")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    want = {"step/total", "step/con", "step/lr", "step/clips_per_s", "step/data_s", "step/step_s"}
    assert want <= tags, sorted(tags)
    assert [ev.step for ev in events.Scalars("step/lr")] == [4, 8]  # optimizer steps


def test_model_ema_matches_the_formula():
    """ModelEma: float tensors (parameters and buffers) follow the warmed-up EMA, integer buffers
    are copied, the trained model is left alone, and a state dict round-trips."""
    from artlib.engine.ema import ModelEma

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ModelEma(model, decay=0.9)
    expect = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(6):
        model.train()(torch.randn(5, 3))  # moves the BatchNorm statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            expect[k] = d * expect[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        ema.update(model)
    got = ema.module.state_dict()
    for k, v in expect.items():
        torch.testing.assert_close(got[k], v, msg=k)
    assert got["1.num_batches_tracked"].item() == 6
    assert not torch.equal(got["0.weight"], model[0].weight)
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())
    other = ModelEma(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 6 and torch.equal(other.module[0].weight, got["0.weight"])
    with pytest.raises(ValueError, match="decay must be in"):
        ModelEma(model, decay=1.0)


def test_backbone_lr_mult_groups():
    """--backbone-lr-mult: the backbone's parameters (decayed or not) run at lr x M, the head's at
    lr; biases and norms are not decayed; the schedule scales every group alike."""
    from artlib.engine.config import OptimConfig, TrainConfig
    from artlib.engine.optim import build_optimizer

    model = torch.nn.Module()
    model.backbone = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model.head = torch.nn.Linear(4, 2)
    cfg = TrainConfig()
    cfg.optim = OptimConfig(
        optimizer="adamw", lr=0.01, backbone_lr_mult=0.1, weight_decay=0.05, warmup_epochs=2
    )
    opt, sched = build_optimizer(cfg, model)
    where = {id(p): n for n, p in model.named_parameters()}
    got = {
        where[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]
    }
    assert got == {
        "backbone.0.weight": (pytest.approx(1e-4), 0.05),  # warm-up: lr / 10 at epoch 0
        "backbone.0.bias": (pytest.approx(1e-4), 0.0),
        "backbone.1.weight": (pytest.approx(1e-4), 0.0),
        "backbone.1.bias": (pytest.approx(1e-4), 0.0),
        "head.weight": (pytest.approx(1e-3), 0.05),
        "head.bias": (pytest.approx(1e-3), 0.0),
    }
    for _ in range(2):  # past the warm-up: the full lr of each group
        opt.step()
        sched.step()
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2])


def test_lr_schedules():
    from artlib.engine.config import OptimConfig, TrainConfig
    from artlib.engine.optim import lr_factor

    paper = TrainConfig()  # x0.1 every 20 epochs, no warm-up
    assert [lr_factor(paper, e) for e in (0, 19, 20, 39, 40)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01]
    )
    cos = TrainConfig(optim=OptimConfig(lr_schedule="cosine", epochs=12, warmup_epochs=2))
    f = [lr_factor(cos, e) for e in range(12)]
    assert f[:3] == pytest.approx([0.1, 0.55, 1.0])
    assert f[7] == pytest.approx(0.5) and all(a > b for a, b in zip(f[2:], f[3:]))


def test_lr_scales_with_the_global_batch():
    """--lr-scale linear: --lr is the lr of a global batch of 24 (the paper's), scaled by
    batch-size x ranks x accum-steps / 24; none: --lr as given. The optimizer starts from it."""
    from artlib.engine.cli import parse
    from artlib.engine.optim import build_optimizer, effective_lr, global_batch

    cfg = parse(["--lr", "0.01", "--batch-size", "6", "--accum-steps", "2", "--lr-scale", "linear"])
    assert global_batch(cfg, world_size=4) == 48
    assert effective_lr(cfg, world_size=4) == pytest.approx(0.02)
    assert effective_lr(cfg, world_size=1) == pytest.approx(0.005)
    cfg.optim.warmup_epochs = 0
    model = torch.nn.Module()
    model.backbone, model.head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    opt, _ = build_optimizer(cfg, model, world_size=2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01] * len(opt.param_groups))
    plain = parse(["--lr", "0.01", "--batch-size", "6"])
    assert plain.optim.lr_scale == "none" and effective_lr(plain, world_size=8) == 0.01


def test_synthetic_evidence_table(env, tmp_path):
    """examples/synthetic_evidence.py: ART and the baseline per seed, each its own trainer process,
    two at a time; the table has a row per variant and the last line the margin against the
    spread."""
    e, bank = env
    table = tmp_path / "table.md"
    script = str(REPO / "examples" / "synthetic_evidence.py")
    cmd = [
        sys.executable,
        script,
        "--seeds",
        "0",
        "1",
        "--jobs",
        "2",
        "--out",
        str(tmp_path / "ev"),
    ]
    extra = ["--", *TINY, "--epochs", "1", "--bank", bank]
    abl = ["--variants", "no SE", "--ablation-seeds", "1"]
    res = _run([*cmd, *abl, "--table", str(table), "--pretrain-epochs", "1", *extra], e)
    rows = [
        r
        for r in table.read_text().splitlines()
        if r.startswith("| ART") or r.startswith("| baseline")
    ]
    assert len(rows) == 2 and all("| 2 |" in r for r in rows), table.read_text()
    assert "| no SE | 1 |" in table.read_text()
    summaries = sorted(p.parent.name for p in (tmp_path / "ev").glob("*/summary.json"))
    assert summaries == [
        "ART_seed0",
        "ART_seed1",
        "baseline_seed0",
        "baseline_seed1",
        "no_SE_seed1",
        "pretrain_seed0",
    ]
    # every run starts from the pretraining run's backbone (trained on another generated set)
    weights = tmp_path / "ev" / "pretrain_seed0" / "backbone.pt"
    pre_log = (tmp_path / "ev" / "pretrain_seed0" / "stdout.log").read_text()
    assert "baseline | tiny" in pre_log and "(random init)" in pre_log
    for run in summaries[:5]:
        assert f"(weights: {weights})" in (tmp_path / "ev" / run / "stdout.log").read_text()
    last = res.stdout.strip().splitlines()[-1]
    assert "ART - baseline = " in last and "(per seed " in last
    bad = _run([*cmd, "--variants", "no SE,no such"], e, check=False)
    assert bad.returncode == 2 and "unknown ['no such']" in bad.stderr


def test_synthetic_preset_starts_from_the_packaged_backbone(tmp_path):
    """The synthetic preset's --pretrained auto: tiny_cnn at 64x64 starts from the packaged
    weights; another backbone or input size from random weights; a given value wins."""
    from artlib.engine.cli import parse

    def pretrained(*flags):
        return parse(list(flags)).model.pretrained

    assert pretrained() == "synthetic"
    assert pretrained("--pretrained", "none") == pretrained("--pretrained", "None") == "none"
    assert pretrained("--crop-size", "32") == "none"
    assert pretrained("--backbone", "tiny") == "none"
    weights = tmp_path / "backbone.pt"
    weights.write_bytes(b"")
    assert pretrained("--pretrained", str(weights)) == str(weights)


def test_aggregation_flags(tmp_path):
    """--no-ta (Table IV) is --aggregation mean; the synthetic preset keeps tracklets in order,
    the paper's aggregates them by saliency (Eq. 9)."""
    from artlib.engine.config import head_options, resolve

    def agg(**given):
        return head_options(resolve(given))["aggregation"]

    paper = {"data.train_list": "a.txt", "data.val_list": "b.txt", "model.pretrained": "none"}
    paper["model.text_model"] = "random"
    assert agg() == "sequence" and agg(**paper) == "saliency"
    assert agg(**{"model.aggregation": "sum"}) == "sum"
    from artlib.engine.cli import parse

    assert parse(["--no-ta"]).model.aggregation == "mean"


def test_console_scripts_point_at_mains():
    """pyproject's console scripts: artlib-train is the trainers' main; each target that exists in
    this tree is a callable main."""
    import importlib.util
    import re

    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', section, re.M))
    assert set(scripts) == {
        "artlib-train",
        "artlib-prepare",
        "artlib-check",
        "artlib-evaluate",
        "artlib-predict",
        "artlib-torchrun",
    }
    assert scripts["artlib-train"] == "artlib.engine.cli:main"
    for name, target in scripts.items():
        module, func = target.split(":")
        if (
            name in ("artlib-evaluate", "artlib-predict")
            and importlib.util.find_spec(module) is None
        ):
            continue  # not in this tree yet
        assert callable(getattr(importlib.import_module(module), func)), target


class _FixedLoss(torch.nn.Module):
    """A stand-in model whose loss terms are known per step: total = w * step_value."""

    def __init__(self, values):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.values = list(values)
        self.calls = 0

    def forward(self, video, labels):
        v = self.values[self.calls]
        self.calls += 1
        total = self.w * v
        return None, {"total": total, "v": total.detach() * 2}

    def ema_update(self):
        pass


def _trainer(model, cfg=None, lr=0.0, accum=1):
    """A Trainer over a stand-in model, plain SGD, one CPU rank, no files written."""
    from artlib.engine.config import TrainConfig
    from artlib.engine.distributed import DistInfo
    from artlib.engine.trainer import Trainer

    cfg = cfg or TrainConfig()
    cfg.optim.epochs, cfg.optim.accum_steps, cfg.run.progress, cfg.run.log_every = (
        1,
        accum,
        False,
        2,
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    return Trainer(cfg, model, None, None, ["a", "b", "c"], info, optimizer=opt)


def test_losses_accumulate_on_the_device_and_are_read_per_interval():
    """The epoch's means are the clip-weighted means of the step losses; a non-finite loss stops
    the epoch at the next read-out, naming the step."""
    batches = [(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)) for n in (4, 4, 2)]
    trainer = _trainer(_FixedLoss([1.0, 2.0, 4.0]))
    trainer.train_loader = batches
    row = trainer.train_epoch(0)
    assert row["train_total"] == pytest.approx((4 * 1 + 4 * 2 + 2 * 4) / 10)
    assert row["train_v"] == pytest.approx(2 * row["train_total"])
    trainer = _trainer(_FixedLoss([1.0, float("nan"), 1.0]))
    trainer.train_loader = batches
    with pytest.raises(FloatingPointError, match="step 2"):
        trainer.train_epoch(0)
    trainer = _trainer(_FixedLoss([1.0]))
    trainer.train_loader = [(torch.zeros(2, 1), torch.tensor([0, 3]))]  # label 3 of 3 classes
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got range \[0, 3\]"):
        trainer.train_epoch(0)


@pytest.mark.parametrize("skipped", [1, 3])
def test_accumulated_gradients_of_skipped_last_steps_are_applied(skipped):
    """--accum-steps 2 over 6 steps whose last ``skipped`` have no usable video on any rank (the
    loader's batch holds none): the micro-batch pending before them still makes a step.
    With lr 1 and loss w * v per micro-batch (scaled by 1/2), w ends at 1 - sum(v) / 2 over the
    steps that ran: every micro-batch's gradient reaches the weights."""
    values = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0][: 6 - skipped]
    model = _FixedLoss(values)
    trainer = _trainer(model, lr=1.0, accum=2)
    clip = {"video": torch.zeros(2, 1), "label": torch.zeros(2, dtype=torch.long), "index": None}
    empty = {"video": None, "label": torch.zeros(0, dtype=torch.long), "index": None}
    trainer.train_loader = [clip] * len(values) + [empty] * skipped
    trainer.train_epoch(0)
    assert model.calls == len(values)
    expect = 1.0 - sum(values) / 2
    assert model.w.item() == pytest.approx(expect), (model.w.item(), expect, trainer.steps_done)
    assert trainer.steps_done == math.ceil(len(values) / 2)


_FLUSH_RANK = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_train import _FixedLoss, _trainer
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + {store!r}, rank=rank, world_size=2)
from artlib.engine.distributed import DistInfo
values = [(rank + 1) * v for v in (1.0, 2.0, 4.0)]  # 3 steps run, the 4th is skipped on both
model = _FixedLoss(values)
trainer = _trainer(model, lr=1.0, accum=2)
trainer.info = DistInfo(rank, 2, 0, torch.device("cpu"))
trainer.net = torch.nn.parallel.DistributedDataParallel(model)
clip = {{"video": torch.zeros(2, 1), "label": torch.zeros(2, dtype=torch.long), "index": None}}
empty = {{"video": None, "label": torch.zeros(0, dtype=torch.long), "index": None}}
trainer.train_loader = [clip] * 3 + [empty]
trainer.train_epoch(0)
print(repr(model.w.item()), trainer.steps_done)
dist.destroy_process_group()
"""


def test_pending_gradients_are_averaged_over_the_ranks(tmp_path):
    """Two gloo ranks, --accum-steps 2, the last of 4 steps skipped on both: the third
    micro-batch ran under no_sync, and its gradients are averaged over the ranks before the
    extra step, as DDP would have: both ranks end with the same w = 1 - mean over ranks of
    sum(v) / 2."""
    script = tmp_path / "rank.py"
    script.write_text(_FLUSH_RANK.format(tests=str(REPO / "tests"), store=str(tmp_path / "store")))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r)], env=env, stdout=subprocess.PIPE, text=True,
            stderr=subprocess.PIPE,
        )
        for r in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    got = [out.split() for out, _ in outs]
    expect = 1.0 - (7.0 + 14.0) / 2 / 2  # rank 0: 1 + 2 + 4, rank 1: twice that
    for w, steps in got:
        assert float(w) == pytest.approx(expect) and int(steps) == 2, (got, expect)


def test_compiled_model_unwraps_to_the_module():
    from artlib.engine.model import compile_model, unwrap

    net = torch.nn.Linear(2, 2)
    compiled = compile_model(net, "default")  # compiles on the first call only
    assert compiled is not net and unwrap(compiled) is net


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_step_makes_no_host_sync():
    """On CUDA, the steps of an epoch run under torch.cuda.set_sync_debug_mode('error'): no
    .item(), no isfinite check, no loss read but the one of the log interval."""
    from artlib.engine.config import TrainConfig
    from artlib.engine.distributed import DistInfo
    from artlib.engine.model import build_model
    from artlib.engine.trainer import Trainer

    cfg = TrainConfig()
    cfg.model.backbone, cfg.model.pretrained, cfg.model.text_model = "tiny", "none", "random"
    cfg.model.dim, cfg.model.heads, cfg.model.se_layers, cfg.model.act_layers = 32, 2, 1, 1
    cfg.data.crop_size, cfg.data.num_frames = 32, 4
    cfg.optim.optimizer, cfg.optim.epochs, cfg.run.progress, cfg.run.log_every = (
        "adamw",
        1,
        False,
        99,
    )
    names = ["a", "b", "c"]
    model = build_model(cfg, names).cuda()
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(2, 4, 3, 32, 32, generator=gen).pin_memory(),
            torch.tensor([0, 2]).pin_memory(),
        )
        for _ in range(3)
    ]

    class Strict:
        """Yields the batches; the steps of all but the last run in 'error' sync mode."""

        def __len__(self):
            return len(batches)

        def __iter__(self):
            for i, b in enumerate(batches):
                torch.cuda.set_sync_debug_mode("error" if i < len(batches) - 1 else "default")
                yield b
            torch.cuda.set_sync_debug_mode("default")

    info = DistInfo(0, 1, 0, torch.device("cuda", 0))
    trainer = Trainer(cfg, model, batches, None, names, info)
    trainer.train_epoch(0)  # warm-up
    trainer.train_loader = Strict()
    try:
        row = trainer.train_epoch(0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert set(row) >= {"train_total", "train_v", "train_con"}


def test_training_steps_log_the_tracklet_health_with_unchanged_losses():
    """ART's step asks for the maps (return_maps) to log train_health_*: the loss terms are the
    same as without, and the health figures are those of health_scalars on the same maps."""
    from artlib.engine.config import TrainConfig
    from artlib.engine.model import build_model
    from artlib.nn.localization import health_scalars
    from tests.helpers import assert_close

    cfg = TrainConfig()
    cfg.model.backbone, cfg.model.text_model, cfg.model.dim, cfg.model.heads = (
        "tiny_cnn", "random", 32, 2,
    )  # fmt: skip
    cfg.data.num_frames, cfg.data.crop_size, cfg.model.dropout = 4, 32, 0.0
    torch.manual_seed(0)
    model = build_model(cfg, ["a", "b", "c"]).eval()
    video, labels = torch.rand(2, 4, 3, 32, 32), torch.tensor([0, 2])
    torch.manual_seed(1)
    _, plain = model(video, labels)
    torch.manual_seed(1)
    _, with_maps = model(video, labels, return_maps=True)
    maps = with_maps.pop("maps")
    assert plain.keys() == with_maps.keys()
    for k in plain:  # the maps may come from another implementation (native vs reference)
        assert_close(with_maps[k].detach(), plain[k].detach(), name=k)
    trainer = _trainer(model, cfg)
    assert trainer.health
    torch.manual_seed(1)
    losses = trainer.train_step(video, labels, step_now=False)
    want = health_scalars(maps)
    assert {k for k in losses if k.startswith("health_")} == set(want)
    for k, v in want.items():
        assert v.dim() == 0, (k, v.shape)
        assert_close(losses[k].detach(), v.detach(), name=k)
    cfg.model.baseline = True
    assert not _trainer(_FixedLoss([1.0]), cfg).health


def test_eval_result_final_line_names_the_top_k_it_measures():
    """k = min(5, classes): with 3 classes the "top5" hits are a Top-3 (artlib.evaluate's rule)."""
    from artlib.engine.evaluation import EvalResult

    r = EvalResult(matrix=torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]]), top5_hits=3, count=3,
                   total=3)  # fmt: skip
    assert r.final_line() == (
        "FINAL eval top1=0.6667 top3=1.0000 mean_class_acc=0.6667 count=3 skipped=0"
    )
    assert list(r.metrics()) == ["top1", "top3", "mean_class_acc", "count", "skipped"]
    r = EvalResult(matrix=torch.eye(6, dtype=torch.long), top5_hits=6, count=6, total=6)
    assert " top5=1.0000 " in r.final_line("FINAL val")


def test_native_kernels_load_before_the_first_epoch_on_cpu_only_for_art(monkeypatch):
    from artlib.engine.config import TrainConfig
    from artlib.ops import _backend, _native

    calls = []
    monkeypatch.setattr(_native, "load", lambda: calls.append(1) or True)
    monkeypatch.setattr(_backend, "planned", lambda op, device_type: "native")
    _trainer(_FixedLoss([1.0])).prepare_native()
    assert calls == [1]
    cfg = TrainConfig()
    cfg.model.baseline = True
    _trainer(_FixedLoss([1.0]), cfg).prepare_native()
    monkeypatch.setattr(_backend, "planned", lambda op, device_type: "reference")
    _trainer(_FixedLoss([1.0])).prepare_native()
    assert calls == [1]  # not for the baseline, nor when another backend runs
