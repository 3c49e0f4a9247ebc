"""``python -m artlib.data.check`` and ``prepare diving48``: missing, empty, corrupt, truncated and
too-short videos are found and listed, and the exit status says so."""

from __future__ import annotations

import csv
import json
import os

import pytest

av = pytest.importorskip("av")

from artlib.data._write import frame_index_image, write_garbage_video, write_index_video  # noqa: E402
from artlib.data.check import check_items, check_video  # noqa: E402
from artlib.data.check import main as check_main  # noqa: E402
from artlib.data.prepare import main as prepare_main  # noqa: E402

T = 16


def write_faststart(path, n):
    """An H.264 mp4 with its index (moov) before the data, as YouTube serves them: cut short, it
    still opens and still claims n frames."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"x264-params": "keyint=8:min-keyint=8:scenecut=0"}
        for i in range(n):
            img = frame_index_image(i, 48, 64)
            out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_index_video(d / "good.mp4", 24, size=(48, 64))
    write_index_video(d / "short.mp4", 9, size=(48, 64))
    (d / "empty.mp4").write_bytes(b"")
    write_garbage_video(d / "corrupt.mp4", 3000)  # never os.urandom: some probe as a subtitle
    write_faststart(d / "full.mp4", 60)
    with av.open(str(d / "full.mp4")) as c:  # cut at packet 30: the header still says 60 frames
        cut = [p.pos for p in c.demux(video=0) if p.size][30]
    (d / "truncated.mp4").write_bytes((d / "full.mp4").read_bytes()[:cut])
    return d


def test_check_video_kinds(videos):
    kinds = {
        name: (p.kind, p.decoded, p.usable)
        if (p := check_video(videos / f"{name}.mp4", T))
        else None
        for name in ("good", "short", "empty", "corrupt", "full", "missing")
    }
    assert kinds == {
        "good": None,
        "short": ("short", 9, True),  # usable: the sampling repeats frames
        "empty": ("empty", 0, False),
        "corrupt": ("corrupt", -1, False),
        "full": None,
        "missing": ("missing", -1, False),
    }
    # a truncated download keeps its header's frame count, but its index points past its end
    for mode in ("metadata", "last", "full"):
        p = check_video(videos / "truncated.mp4", T, mode=mode)
        assert p.kind == "truncated" and not p.usable and "index refers to" in p.reason, mode


def test_check_cli_lists_bad_videos_and_exits_nonzero(videos, tmp_path, capsys):
    names = ["good", "short", "empty", "corrupt", "truncated", "missing", "good"]
    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"{n}.mp4 {i}\n" for i, n in enumerate(names)))
    report = tmp_path / "bad.csv"
    argv = ["--list", str(lst), "--root", str(videos), "--num-frames", str(T), "--no-progress"]
    good = tmp_path / "good.txt"
    assert (
        check_main([*argv, "--workers", "2", "--report", str(report), "--write-good", str(good)])
        == 1
    )
    out = capsys.readouterr().out
    listed = {
        os.path.basename(line.split("\t")[1]): line.split("\t")[0]
        for line in out.splitlines()
        if "\t" in line
    }
    assert listed == {
        "short.mp4": "short",
        "empty.mp4": "empty",
        "corrupt.mp4": "corrupt",
        "truncated.mp4": "truncated",
        "missing.mp4": "missing",
        "good.mp4": "conflicting_label",  # listed twice, with labels 0 and 6
    }
    assert "checked 6 videos" in out and "FOUND 4 unusable videos" in out
    assert "FOUND 1 list problems: 1 conflicting_label" in out
    assert "item 7 lists the video of item 1 with label 6, item 1 with label 0" in out
    assert "notes (usable, T=16): 1 short" in out
    with open(report, newline="") as fh:
        assert sorted(r["kind"] for r in csv.DictReader(fh)) == sorted(listed.values())

    # usable items (short ones too), labels kept, absolute paths: the trainer takes them as they
    # are; a video listed twice is written once, with its first label
    assert good.read_text() == "".join(
        f"{videos / n}.mp4 {i}\n" for i, n in [(0, "good"), (1, "short")]
    )
    from artlib.data import read_generic_list

    for root in (None, "/somewhere/else"):
        items, _ = read_generic_list(good, root)
        assert [it.path for it in items] == [str(videos / f"{n}.mp4") for n in ("good", "short")]

    lst.write_text("good.mp4 0\nfull.mp4 1\nshort.mp4 2\n")
    assert check_main([*argv, "--workers", "1"]) == 0  # a note is not a problem
    assert "OK" in capsys.readouterr().out
    # items in list order, each path once
    probs = check_items([videos / "missing.mp4", videos / "short.mp4", videos / "missing.mp4"])
    assert [(os.path.basename(p.path), p.kind) for p in probs] == [
        ("missing.mp4", "missing"),
        ("short.mp4", "short"),
    ]


def test_check_cli_validates_labels_and_duplicate_lines(videos, tmp_path, capsys):
    lst = tmp_path / "train.txt"
    lst.write_text("good.mp4 0\nshort.mp4 7\nfull.mp4 1\ngood.mp4 0\nfull.mp4 2\n")
    argv = ["--list", str(lst), "--root", str(videos), "--num-frames", "4", "--no-progress"]
    good = tmp_path / "good.txt"
    # without --num-classes any label >= 0 goes; the duplicates are found all the same
    assert check_main([*argv, "--workers", "1", "--write-good", str(good)]) == 1
    out = capsys.readouterr().out
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    assert [(r[0], os.path.basename(r[1]), r[4]) for r in rows] == [
        ("duplicate", "good.mp4", "item 4 lists the video of item 1 again"),
        (
            "conflicting_label",
            "full.mp4",
            "item 5 lists the video of item 3 with label 2, item 3 with label 1",
        ),
    ]
    assert "FOUND 2 list problems: 1 duplicate, 1 conflicting_label" in out
    # a label 7 with three videos: the classes in between have none
    assert "notes: 4 classes have no video: labels 3, 4, 5, 6" in out
    # the good list holds each video once, with its first label
    assert [ln.split()[-1] for ln in good.read_text().splitlines()] == ["0", "7", "1"]

    assert (
        check_main([*argv, "--workers", "1", "--num-classes", "4", "--write-good", str(good)]) == 1
    )
    out = capsys.readouterr().out
    assert "bad_label\t" in out and "item 2: label 7 is outside 0..3 (4 classes)" in out, out
    assert "FOUND 3 list problems: 1 bad_label, 1 duplicate, 1 conflicting_label" in out
    assert "notes: 1 classes have no video: labels 3" in out
    assert "short.mp4" not in good.read_text()  # a label out of range is not a good item

    names = tmp_path / "classes.txt"
    names.write_text("a\nb\nc\n")
    lst.write_text("good.mp4 0\nshort.mp4 2\nfull.mp4 1\n")
    assert check_main([*argv, "--workers", "1", "--class-names", str(names)]) == 0
    assert "OK: every video is usable" in capsys.readouterr().out
    lst.write_text("good.mp4 0\nshort.mp4 3\n")
    assert check_main([*argv, "--workers", "1", "--class-names", str(names)]) == 1
    assert "item 2: label 3 is outside 0..2 (3 classes)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, args, message",
    [
        ("# only a comment\n", [], "--list: {lst} lists no videos"),
        ("", [], "--list: {lst} lists no videos"),
        ("a.mp4 x\n", [], "--list: {lst}:1: label must be an integer, got 'x'"),
        ("a.mp4 0\n", ["--num-classes", "0"], "--num-classes: expected >= 1, got 0"),
        ("a.mp4 0\n", ["--class-names", "{names}", "--num-classes", "2"], "disagrees with the 3"),
        ("a.mp4 0\n", ["--class-names", "{empty}"], "--class-names: {empty} names no class"),
        ("a.mp4 0\n", ["--class-names", "{twice}"], "class 'a' is named twice (labels 0, 2)"),
        ("a.mp4 0\n", ["--class-names", "nowhere.txt"], "--class-names: [Errno 2]"),
    ],
)
def test_check_cli_refuses_an_empty_list_and_bad_class_options(
    tmp_path, capsys, content, args, message
):
    lst, names, empty, twice = (tmp_path / n for n in ("l.txt", "n.txt", "e.txt", "t.txt"))
    lst.write_text(content)
    names.write_text("a\nb\nc\n")
    empty.write_text("\n \n")
    twice.write_text("a\nb\na\n")
    fill = dict(lst=lst, names=names, empty=empty, twice=twice)
    with pytest.raises(SystemExit) as e:
        check_main(["--list", str(lst), "--no-progress", *(a.format(**fill) for a in args)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert message.format(**fill) in err, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--list", "nope.txt"], "--list: no such file"),
        (["--list", "{lst}", "--root", "nowhere"], "--root: no such folder"),
        (["--list", "{lst}", "--num-frames", "0"], "--num-frames: expected >= 1"),
        (["--list", "{lst}", "--workers", "0"], "--workers: expected >= 1"),
        (["--list", "{lst}", "--write-good", "no/such/dir/x.txt"], "--write-good: the folder"),
        (["--list", "{lst}", "--format", "bogus"], "--format: invalid choice"),
    ],
)
def test_check_cli_misuse_exits_2_on_one_line(tmp_path, capsys, args, message):
    lst = tmp_path / "l.txt"
    lst.write_text("a.mp4 0\n")
    args = [a.format(lst=lst) for a in args]
    with pytest.raises(SystemExit) as e:
        check_main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_prepare_diving48_verify(videos, tmp_path, capsys):
    items = [{"vid_name": n, "label": i} for i, n in enumerate(["good", "full", "short", "gone"])]
    ann = tmp_path / "Diving48_V2_test.json"
    ann.write_text(json.dumps(items))
    report = tmp_path / "d48.csv"
    argv = ["diving48", "--root", str(videos), "--annotations", str(ann), "--num-frames", str(T)]
    assert prepare_main([*argv, "--workers", "1", "--no-progress", "--report", str(report)]) == 1
    err = capsys.readouterr().err
    assert "short\t" in err and "short.mp4" in err and "missing\t" in err and "gone.mp4" in err
    with open(report, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["kind"], os.path.basename(r["name"])) for r in rows) == [
        ("missing", "gone.mp4"),
        ("short", "short.mp4"),
    ]


def test_check_a_full_disk_while_writing_the_report_is_one_line(
    videos, tmp_path, capsys, monkeypatch
):
    import errno

    import artlib.data.check as check

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.csv"))

    monkeypatch.setattr(check, "write_problems", full)
    lst = tmp_path / "l.txt"
    lst.write_text("good.mp4 0\n")
    argv = ["--list", str(lst), "--root", str(videos), "--report", str(tmp_path / "r.csv")]
    assert check_main([*argv, "--no-progress", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "r.csv" in err, err
