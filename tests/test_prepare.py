"""``python -m artlib.data.prepare``: frame-exact cuts, the FineGym JSON, resumability, the report.

Every raw video the tests make shows its own frame index in its pixels (``frame_index_image``), so a
cut clip can be read back frame by frame and compared, to the frame, with the frames of the raw video
whose time t satisfies start <= t < end. The expected frames come from decoding the raw file and its
timestamps, not from the code under test.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest

av = pytest.importorskip("av")

from artlib.data._write import read_frame_index, write_index_video  # noqa: E402
from artlib.data.prepare import (  # noqa: E402
    ClipJob,
    finegym_jobs,
    kinetics_jobs,
    main,
    run_jobs,
)
from tests.helpers import child_pids, wait_gone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = (120, 160)  # H, W
YT_A, YT_B, YT_W, YT_MISSING = "AAAAAAAAAAA", "BBBBBBBBB-b", "WWWWWWWWW_w", "CCCCCCCCCCC"


def clip_indices(path) -> list[int]:
    """The index drawn in each frame of ``path``, decoding every frame in display order."""
    with av.open(str(path)) as c:
        return [read_frame_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def timed_indices(path) -> list[tuple[Fraction, int]]:
    """(presentation time in seconds, drawn index) of every frame of a raw video."""
    with av.open(str(path)) as c:
        assert c.start_time in (None, 0)  # the tests' files start at 0: t = pts * time_base
        return [
            (f.pts * f.time_base, read_frame_index(f.to_ndarray(format="rgb24")))
            for f in c.decode(video=0)
        ]


def expected(raw_frames, start, end) -> list[int]:
    start, end = Fraction(str(start)), Fraction(str(end))
    return [i for t, i in raw_frames if start <= t < end]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """RAW/<A>.mp4: 25 fps CFR, 250 frames, keyframe every 25 (so cuts seek); RAW/<B>/<B>.mp4: a
    variable frame rate (frame durations 20, 60, 40 ms), 120 frames, in the one-folder-per-video
    layout some downloaders use; RAW/<W>.webm: VP9 in WebM (ms timestamps), as YouTube often serves.
    <MISSING> is not there."""
    root = tmp_path_factory.mktemp("raw")
    a = write_index_video(root / f"{YT_A}.mp4", 250, size=SIZE, fps=25, gop=25)
    (root / YT_B).mkdir()
    b = write_index_video(root / YT_B / f"{YT_B}.mp4", 120, size=SIZE, fps=25, gop=30, vfr=True)
    w = write_index_video(root / f"{YT_W}.webm", 60, size=SIZE, codec="vp9", gop=20)
    return {"dir": root, YT_A: timed_indices(a), YT_B: timed_indices(b), YT_W: timed_indices(w)}


def seg(*stamps):
    return {"stages": len(stamps), "timestamps": [list(s) for s in stamps]}


# FineGym's structure: event times in seconds of the raw video, stage times relative to the event.
ANNOTATIONS = {
    YT_A: {
        "E_000001_000005": {
            "event": 1,
            "timestamps": [[1.0, 5.0]],
            "segments": {
                "A_0000_0001": seg((0.0, 1.0)),  # [1, 2): frames 25..49 (both ends on frames)
                "A_0001_0003": seg((1.2, 1.6), (1.6, 2.0), (2.0, 2.52)),  # 3 stages: [2.2, 3.52)
                "A_0003_0003": seg((2.9, 3.1)),  # 5 frames: shorter than T
            },
        },
        "E_000005_000009": {
            "event": 4,
            "timestamps": [[5.96, 9.5]],
            "segments": {"A_0000_0002": seg((0.0, 0.5), (0.5, 2.04))},  # [5.96, 8.0): 149..199
        },
        "E_000009_000010": {"event": 2, "timestamps": [[9.0, 10.0]], "segments": None},
        "E_000009_000011": {
            "event": 2,
            "timestamps": [[9.0, 11.0]],
            "segments": {"A_0000_0002": seg((0.41, 2.0))},  # runs past the video's end (9.96 s)
        },
    },
    YT_B: {
        "E_000000_000003": {
            "event": 3,
            "timestamps": [[0.5, 3.0]],
            "segments": {
                "A_0000_0001": seg((0.0, 0.7)),
                "A_0001_0002": seg((0.73, 0.97), (0.97, 1.78)),
            },
        }
    },
    YT_W: {
        "E_000000_000002": {
            "event": 5,
            "timestamps": [[0.3, 2.3]],
            "segments": {"A_0000_0001": seg((0.42, 1.5))},  # [0.72, 1.8): 18..44
        }
    },
    YT_MISSING: {
        "E_000002_000004": {
            "event": 1,
            "timestamps": [[2.0, 4.0]],
            "segments": {"A_0000_0001": seg((0.0, 1.0)), "A_0001_0002": seg((1.0, 2.0))},
        }
    },
}


def expected_clips(raw) -> dict[str, list[int]]:
    out = {}
    for job in finegym_jobs(ANNOTATIONS):
        if job.source in raw:
            out[job.name] = expected(raw[job.source], job.start, job.end)
    return out


def test_finegym_jobs_names_and_spans():
    jobs = {j.name: j for j in finegym_jobs(ANNOTATIONS)}
    # names as in gym99/gym288 element lists; events without segments give no clip
    assert len(jobs) == 10
    j = jobs[f"{YT_A}_E_000001_000005_A_0001_0003"]
    # first stage start .. last stage end, relative to the event's start, exact decimals
    assert (j.source, j.start, j.end) == (YT_A, Fraction("2.2"), Fraction("3.52"))
    j = jobs[f"{YT_A}_E_000005_000009_A_0000_0002"]
    assert (j.start, j.end) == (Fraction("5.96"), Fraction("8.0"))
    assert f"{YT_MISSING}_E_000002_000004_A_0001_0002" in jobs
    # keys that already carry the id are not prefixed twice
    again = finegym_jobs({YT_A: {f"{YT_A}_E_1_2": {"timestamps": [[1, 2]], "segments": {
        f"{YT_A}_E_1_2_A_3_4": seg((0.5, 1))}}}})  # fmt: skip
    assert again == [ClipJob(f"{YT_A}_E_1_2_A_3_4", YT_A, Fraction(3, 2), Fraction(2))]
    with pytest.raises(ValueError, match="timestamps"):
        finegym_jobs({YT_A: {"E_1_2": {"segments": {"A_1_2": seg((0, 1))}}}})


def test_finegym_cut_exact_frames_report_and_check(raw, tmp_path, capsys):
    ann = tmp_path / "finegym_annotation_info_v1.1.json"
    ann.write_text(json.dumps(ANNOTATIONS))
    out = tmp_path / "clips"
    argv = ["finegym", "--raw", str(raw["dir"]), "--annotations", str(ann), "--out", str(out)]
    assert main([*argv, "--workers", "2", "--no-progress", "--num-frames", "16"]) == 0
    want = expected_clips(raw)
    assert want[f"{YT_A}_E_000001_000005_A_0000_0001"] == list(range(25, 50))  # [1.0, 2.0)
    assert want[f"{YT_A}_E_000001_000005_A_0001_0003"] == list(range(55, 88))  # [2.2, 3.52)
    assert want[f"{YT_A}_E_000005_000009_A_0000_0002"] == list(range(149, 200))  # [5.96, 8.0)
    assert want[f"{YT_W}_E_000000_000002_A_0000_0001"] == list(range(18, 45))  # [0.72, 1.8)
    got = {p.stem: clip_indices(p) for p in out.glob("*.mp4")}
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name  # exactly these frames, +-0
    # short GOP: a keyframe every 16 frames in every clip
    with av.open(str(out / f"{YT_A}_E_000005_000009_A_0000_0002.mp4")) as c:
        keys = [i for i, p in enumerate(c.demux(video=0)) if p.size and p.is_keyframe]
    assert keys == list(range(0, 51, 16))

    with open(out / "prepare_report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kinds = {(r["kind"], r["name"]) for r in rows}
    assert kinds == {
        ("missing_raw", YT_MISSING),
        ("short", f"{YT_A}_E_000001_000005_A_0003_0003"),
        ("short", f"{YT_A}_E_000009_000011_A_0000_0002"),
        ("past_end", f"{YT_A}_E_000009_000011_A_0000_0002"),  # never a silent short clip
    }
    tail = next(r for r in rows if r["kind"] == "past_end")
    assert tail["frames"] == "14" and tail["detail"] == (
        "source ends at 9.960 s, before the span's end 11.000 s"
    )
    assert (tail["start"], tail["end"]) == ("9.410", "11.000")
    assert "2 clips" in next(r["detail"] for r in rows if r["kind"] == "missing_raw")

    # a rerun cuts nothing, reports the same, and --strict turns the missing video into exit 1
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert main([*argv, "--workers", "1", "--no-progress", "--strict"]) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == mtimes
    printed = capsys.readouterr().out
    assert "0 cut, 8 already done" in printed and "1 past the raw video's end" in printed
    with open(out / "prepare_report.csv", newline="") as fh:  # the rerun still reports it
        (tail,) = [r for r in csv.DictReader(fh) if r["kind"] == "past_end"]
    assert tail["name"] == f"{YT_A}_E_000009_000011_A_0000_0002" and tail["frames"] == "14"
    assert "holds 14 frames (0.560 s) of a 1.590 s span" in tail["detail"]

    # the checker on the gym99-style element list of these clips finds the missing and short ones
    elements = tmp_path / "gym99_val_element.txt"
    elements.write_text("".join(f"{j.name} 3\n" for j in finegym_jobs(ANNOTATIONS)))
    from artlib.data.check import main as check_main

    rc = check_main(
        ["--list", str(elements), "--root", str(out), "--format", "finegym", "--num-frames", "16"]
        + ["--workers", "1", "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert rc == 1
    bad = {line.split("\t")[0] + ":" + Path(line.split("\t")[1]).stem
           for line in printed.splitlines() if "\t" in line}  # fmt: skip
    assert bad == {
        f"missing:{YT_MISSING}_E_000002_000004_A_0000_0001",
        f"missing:{YT_MISSING}_E_000002_000004_A_0001_0002",
        f"short:{YT_A}_E_000001_000005_A_0003_0003",
        f"short:{YT_A}_E_000009_000011_A_0000_0002",
    }


def test_failed_clip_is_reported_and_run_goes_on(raw, tmp_path):
    jobs = [
        ClipJob("ok", YT_A, Fraction(0), Fraction(1)),
        ClipJob("beyond_end", YT_A, Fraction(20), Fraction(21)),  # no frame in the span
    ]
    s = run_jobs(jobs, raw["dir"], tmp_path, workers=1, progress=False)
    assert (s.cut, s.failed, s.past_end) == (1, 1, 1)
    (row,) = [r for r in s.rows if r["kind"] == "past_end"]
    assert row["name"] == "beyond_end" and "holds no frame" in row["detail"]
    assert "the video's last frame is at 9.960 s" in row["detail"]
    assert clip_indices(tmp_path / "ok.mp4") == list(range(25))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".prepare.lock", "ok.mp4"]


def test_kinetics_csv(raw, tmp_path):
    from artlib.data.annotations import read_kinetics

    table = tmp_path / "train.csv"
    table.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        f"jumping,{YT_A},2,4,train\n"
        f"diving,{YT_B},0.5,1.9,train\n"
        f"diving,{YT_B},0.5,1.9,train\n"  # a repeated row collapses into one clip
        f"diving,{YT_MISSING},3,5,train\n"
    )
    jobs = kinetics_jobs(table)
    assert [j.name for j in jobs][:2] == [f"{YT_A}_000002_000004", f"{YT_B}_000000_000001"]
    s = run_jobs(jobs, raw["dir"], tmp_path / "k", workers=2, progress=False)
    assert (s.cut, s.missing_clips, s.failed) == (2, 1, 0)
    assert clip_indices(tmp_path / "k" / f"{YT_A}_000002_000004.mp4") == list(range(50, 100))
    assert clip_indices(tmp_path / "k" / f"{YT_B}_000000_000001.mp4") == expected(
        raw[YT_B], "0.5", "1.9"
    )
    # the Kinetics reader finds the clips where prepare put them
    items, names = read_kinetics(table, tmp_path / "k")
    assert names == ["diving", "jumping"]
    assert [os.path.exists(it.path) for it in items] == [True, True, True, False]


def test_killed_run_resumes_to_the_complete_correct_set(raw, tmp_path, capsys):
    """SIGKILL the command part-way (workers die with it), then rerun: every clip present once,
    complete and exact; nothing finished before the kill was redone or lost."""
    events = {
        f"E_{i:06d}_{i + 3:06d}": {
            "event": 1,
            "timestamps": [[i * 0.25, i * 0.25 + 3.0]],
            "segments": {f"A_0000_{i:04d}": seg((0.0, 1.5), (1.5, 2.6))},
        }
        for i in range(24)
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({YT_A: events}))
    want = {j.name: expected(raw[YT_A], j.start, j.end) for j in finegym_jobs(ann)}
    out = tmp_path / "clips"
    cmd = [sys.executable, "-m", "artlib.data.prepare", "finegym", "--raw", str(raw["dir"])]
    cmd += ["--annotations", str(ann), "--out", str(out), "--workers", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # a slow preset so that the kill lands mid-run: the 21 clips left take seconds after the third
    log = tmp_path / "prepare.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([*cmd, "--preset", "veryslow"], env=env, cwd=REPO, stdout=fh,
                                stderr=subprocess.STDOUT)  # fmt: skip
    t0 = time.monotonic()
    while len(list(out.glob("*.mp4"))) < 3 and proc.poll() is None and time.monotonic() < t0 + 300:
        time.sleep(0.02)
    waited = time.monotonic() - t0
    workers = child_pids(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert 3 <= len(done_before) < len(want), (
        f"the kill must land part-way: {len(done_before)} of {len(want)} clips done when killed "
        f"after {waited:.1f} s (exit status {proc.returncode})", log.read_text()[-3000:],
    )  # fmt: skip
    for p in out.glob("*.mp4"):  # what was finished is whole and exact
        assert clip_indices(p) == want[p.stem], p.name
    # the workers died with the parent (PR_SET_PDEATHSIG): no orphan finishes a clip afterwards.
    # Wait for them to be gone (a fixed sleep could end before an orphan's clip was done)
    assert workers or not Path("/proc/self/stat").exists(), "no worker process found"
    alive = [w for w in workers if not wait_gone(w, 60)]
    assert not alive, f"workers {alive} outlived the killed prepare run"
    assert {p.name for p in out.glob("*.mp4")} == set(done_before)

    # the rerun (in this process: one torch import less) finishes the set
    assert main(cmd[3:]) == 0
    assert f"{len(want) - len(done_before)} cut, {len(done_before)} already done" in (
        capsys.readouterr().out
    )
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"{n}.mp4" for n in want] + [".prepare.lock", "prepare_report.csv"])
    for name, frames in want.items():
        assert clip_indices(out / f"{name}.mp4") == frames, name
    for name, mtime in done_before.items():  # finished clips were kept, not redone
        assert (out / name).stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "args, message",
    [
        (["kinetics", "--csv", "{d}/no.csv", "--raw", "{d}", "--out", "{out}"], "--csv: no such"),
        (["kinetics", "--csv", "{csv}", "--raw", "{d}/nope", "--out", "{out}"], "--raw: no such"),
        (["finegym", "--annotations", "{d}/x.json", "--raw", "{d}", "--out", "{out}"], "--annot"),
        (["kinetics", "--csv", "{csv}", "--raw", "{d}", "--out", "{out}", "--crf", "60"], "--crf"),
        (["kinetics", "--csv", "{csv}", "--raw", "{d}", "--out", "{out}", "--workers", "0"], "--w"),
        (["kinetics", "--csv", "{csv}", "--raw", "{d}", "--out", "{out}", "--gop", "0"], "--gop"),
        (["kinetics", "--csv", "{csv}", "--raw", "{d}", "--out", "{csv}"], "not a folder"),
        (["kinetics", "--csv", "{bad}", "--raw", "{d}", "--out", "{out}"], "expected a header"),
        (["kinetics", "--csv", "{csv}", "--raw", "{d}", "--out", "{out}", "--preset", "x"], "--p"),
        (["diving48", "--annotations", "{csv}", "--root", "{d}/nope"], "--root: no such"),
    ],
)
def test_misuse_exits_2_on_one_line_before_creating_out(tmp_path, capsys, args, message):
    csv_file = tmp_path / "k.csv"
    csv_file.write_text("label,youtube_id,time_start,time_end\na,AAAAAAAAAAA,0,1\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    out = tmp_path / "out" / "clips"
    fmt = {"d": tmp_path, "out": out, "csv": csv_file, "bad": bad}
    argv = [a.format(**fmt) for a in args]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing made before the arguments are valid


def _event(timestamps=None, segments=None):
    return {"event": 1, "timestamps": [[1.0, 3.0]] if timestamps is None else timestamps,
            "segments": {"A_1_2": seg((0.1, 0.5))} if segments is None else segments}  # fmt: skip


E = f"{YT_A}/E_1_2"
BAD_FINEGYM = [
    # (annotations as JSON text, the one line's expected content)
    ({YT_A: {"E_1_2": _event("5.5-8.0")}}, f"{E}: timestamps: expected [[start, end]], got '5.5"),
    ({YT_A: {"E_1_2": _event([["5.5", 8.0]])}}, f"{E}: timestamps[0][0]: expected a number of "
     "seconds, got '5.5'"),
    ({YT_A: {"E_1_2": _event([[1, 2], [3, 4]])}}, f"{E}: timestamps: expected [[start, end]], "
     "got [[1, 2], [3, 4]]"),
    ({YT_A: {"E_1_2": _event([[3.0, 1.0]])}}, f"{E}: timestamps[0]: end 1.0 is not after start 3.0"),
    ({YT_A: {"E_1_2": _event([[-1.0, 1.0]])}}, f"{E}: timestamps: the start -1.0 is negative"),
    ({YT_A: {"E_1_2": _event([[True, 2]])}}, f"{E}: timestamps[0][0]: expected a number of "
     "seconds, got true"),
    ({YT_A: {"E_1_2": [[1.0, 3.0]]}}, f"{E}: expected an event object with 'timestamps' and "
     "'segments', got a list"),
    ({YT_A: {"E_1_2": {"segments": None}}}, f"{E}: expected 'timestamps': [[start, end]]"),
    ({YT_A: [1, 2]}, f"{YT_A}: expected an object of events, got list"),
    ({YT_A: {"E_1_2": _event(segments=[seg((0.1, 0.5))])}}, f"{E}: segments: expected null or an "
     "object of subactions, got a list"),
    ({YT_A: {"E_1_2": _event(segments={"A_1_2": [[0.1, 0.5]]})}}, f"{E}/A_1_2: expected an object "
     "with 'timestamps'"),
    ({YT_A: {"E_1_2": _event(segments={"A_1_2": {"timestamps": "0.1-0.5"}})}}, f"{E}/A_1_2: "
     "timestamps: expected [[start, end], ...], got '0.1-0.5'"),
    ({YT_A: {"E_1_2": _event(segments={"A_1_2": seg((0.5, 0.9), (0.2, 0.4))})}}, f"{E}/A_1_2: "
     "timestamps[1]: starts at 0.2, before the previous one (0.5): stages must be in order"),
    ({YT_A: {"E_1_2": _event(segments={"A_1_2": {"stages": "1", "timestamps": [[0, 1]]}})}},
     f"{E}/A_1_2: stages: expected an integer >= 1, got '1'"),
    ({YT_A: {"E_1_2": _event(segments={"A_1_2": seg((0.1, 0.5)), f"{YT_A}_E_1_2_A_1_2": seg(
        (0.6, 0.9))})}}, f"{E}/{YT_A}_E_1_2_A_1_2: the clip name {YT_A}_E_1_2_A_1_2 is also made "
     f"by {YT_A}/E_1_2/A_1_2"),
    (f'{{"{YT_A}": {{"E_1_2": {{"timestamps": [[NaN, 2]], "segments": null}}}}}}',
     f"{E}: timestamps[0][0]: expected a finite number of seconds, got nan"),
    (f'{{"{YT_A}": {{"E_1_2": {{"timestamps": [[1, Infinity]], "segments": null}}}}}}',
     f"{E}: timestamps[0][1]: expected a finite number of seconds, got inf"),
    (f'{{"{YT_A}": {{"E_1_2": {{"timestamps": [[1, 2]]}}, "E_1_2": {{"timestamps": [[3, 4]]}}}}}}',
     "the key 'E_1_2' appears twice in one object"),
    ('{"a": ', ":1: not valid JSON"),
    ("[1, 2]", "expected a JSON object keyed by YouTube id, got list"),
]  # fmt: skip


@pytest.mark.parametrize("ann, message", BAD_FINEGYM)
def test_malformed_finegym_annotations_exit_2_naming_the_entry(raw, tmp_path, capsys, ann, message):
    path = tmp_path / "ann.json"
    path.write_text(ann if isinstance(ann, str) else json.dumps(ann))
    out = tmp_path / "clips"
    with pytest.raises(SystemExit) as e:
        main(["finegym", "--raw", str(raw["dir"]), "--annotations", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"python -m artlib.data.prepare: error: {path}") and message in err, err
    assert not out.exists()  # nothing cut, nothing made


BAD_KINETICS = [
    ("AAAAAAAAAAA,inf,5", ":3: time_start: expected a finite number of seconds, got 'inf'"),
    ("AAAAAAAAAAA,2,nan", ":3: time_end: expected a finite number of seconds, got 'nan'"),
    ("AAAAAAAAAAA,2,x", ":3: time_end: expected a finite number of seconds, got 'x'"),
    ("AAAAAAAAAAA,5,2", ":3: expected 0 <= time_start < time_end, got 5 and 2"),
    ("AAAAAAAAAAA,-1,2", ":3: expected 0 <= time_start < time_end, got -1 and 2"),
    ("AAAAAAAAAAA,1.5,4", ":3: clip AAAAAAAAAAA_000001_000004 is also made by line 2 with another "
     "span ([1.0, 4.0) s vs [1.5, 4.0) s)"),
    ("AAAAAAAAAAA,1", ":3: expected 3 columns, got fewer"),
    (",1,2", ":3: empty youtube_id"),
]  # fmt: skip


@pytest.mark.parametrize("row, message", BAD_KINETICS)
def test_malformed_kinetics_csv_exits_2_naming_the_line(raw, tmp_path, capsys, row, message):
    table = tmp_path / "k.csv"
    table.write_text(f"youtube_id,time_start,time_end\nAAAAAAAAAAA,1,4\n{row}\n")
    out = tmp_path / "clips"
    with pytest.raises(SystemExit) as e:
        main(["kinetics", "--raw", str(raw["dir"]), "--csv", str(table), "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{table}{message}" in err, err
    assert not out.exists()


def test_a_second_prepare_on_a_busy_folder_stops_with_one_line(raw, tmp_path, capsys):
    from artlib._io import file_lock
    from artlib.data.prepare import LOCK_NAME

    table = tmp_path / "k.csv"
    table.write_text("youtube_id,time_start,time_end\nAAAAAAAAAAA,1,2\n")
    out = tmp_path / "clips"
    argv = ["kinetics", "--raw", str(raw["dir"]), "--csv", str(table), "--out", str(out)]
    with file_lock(out / LOCK_NAME):  # another run holds the folder
        assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another prepare run holds" in err, err


def test_python_m_prepare_runs():
    r = subprocess.run(
        [sys.executable, "-m", "artlib.data.prepare", "kinetics", "--csv", "nope.csv", "--raw",
         ".", "--out", "x"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "--csv: no such file" in r.stderr and "Traceback" not in r.stderr
