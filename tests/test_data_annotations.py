"""Every annotation format on small files written here; malformed lines name the file and line."""

import json
import os

import pytest

from artlib.data import (
    VideoItem,
    read_annotations,
    read_diving48,
    read_finegym,
    read_generic_list,
    read_kinetics,
    read_ntu,
    read_ssv2,
    write_generic_list,
)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_finegym(tmp_path):
    lst = _write(
        tmp_path / "gym99_train.txt",
        "0LtLS9wROrk_E_002407_002435_A_0003_0005 12\n\nA-1b2c3d4e5_E_000001_000010_A_0000_0001 0\n",
    )
    cats = _write(
        tmp_path / "gym99_categories.txt",
        "Clabel: 0; set: 1; Glabel: 1; (VT) round-off, flic-flac\n"
        + "".join(f"Clabel: {i}; set: 2; Glabel: {i}; (FX) element {i}\n" for i in range(1, 13)),
    )
    items, names = read_finegym(lst, "/videos", categories_file=cats)
    assert items == [
        VideoItem("/videos/0LtLS9wROrk_E_002407_002435_A_0003_0005.mp4", 12),
        VideoItem("/videos/A-1b2c3d4e5_E_000001_000010_A_0000_0001.mp4", 0),
    ]
    assert len(names) == 13 and names[0] == "(VT) round-off, flic-flac"
    assert read_annotations("gym288", lst, "/videos")[0] == items

    bad = _write(tmp_path / "bad.txt", "0LtLS9wROrk_E_002407_002435_A_0003_0005 1\nnot_an_id 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2:.*element id"):
        read_finegym(bad, "/videos")
    bad = _write(tmp_path / "bad2.txt", "0LtLS9wROrk_E_002407_002435_A_0003_0005 x\n")
    with pytest.raises(ValueError, match=r"bad2\.txt:1: label must be an integer"):
        read_finegym(bad, "/videos")


def test_diving48(tmp_path):
    data = [
        {"vid_name": "-mmq0PT-u8k_00155", "label": 0, "start_frame": 0, "end_frame": 60},
        {"vid_name": "zzz_00001", "label": 2, "start_frame": 0, "end_frame": 30},
    ]
    js = _write(tmp_path / "Diving48_V2_train.json", json.dumps(data))
    vocab = _write(
        tmp_path / "Diving48_vocab.json",
        json.dumps(
            [
                ["Back", "15som", "05Twis", "FREE"],
                ["Back", "15som", "15Twis", "FREE"],
                ["Forward", "25som", "NoTwis", "PIKE"],
            ]
        ),  # fmt: skip
    )
    items, names = read_diving48(js, "/d48", vocab)
    assert items == [VideoItem("/d48/-mmq0PT-u8k_00155.mp4", 0), VideoItem("/d48/zzz_00001.mp4", 2)]
    assert names[2] == "Forward 25som NoTwis PIKE"
    bad = _write(tmp_path / "bad.json", json.dumps([data[0], {"vid_name": "x"}]))
    with pytest.raises(ValueError, match=r"bad\.json:2: item needs 'vid_name' and 'label'"):
        read_diving48(bad, "/d48")
    broken = _write(tmp_path / "broken.json", '[{"vid_name": "a",\n "label": }]')
    with pytest.raises(ValueError, match=r"broken\.json:2: not valid JSON"):
        read_diving48(broken, "/d48")


def test_kinetics(tmp_path):
    csv = _write(
        tmp_path / "train.csv",
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,--33Lscn6sk,4,14,train\n"
        "air drumming,-0JkjsR-3Sk,10,20,train\n"
        "abseiling,-1LVpVyvWNo,0,10,train\n",
    )
    (tmp_path / "vids" / "air_drumming").mkdir(parents=True)
    (tmp_path / "vids" / "air_drumming" / "-0JkjsR-3Sk_000010_000020.mp4").write_bytes(b"")
    items, names = read_kinetics(csv, tmp_path / "vids")
    assert names == ["abseiling", "air drumming"]
    root = str(tmp_path / "vids")
    assert items[0] == VideoItem(os.path.join(root, "--33Lscn6sk_000004_000014.mp4"), 0)
    assert items[1] == VideoItem(
        os.path.join(root, "air_drumming", "-0JkjsR-3Sk_000010_000020.mp4"), 1
    )
    test_csv = _write(
        tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nabc,1,11,test\n"
    )
    items, _ = read_annotations("kinetics", test_csv, root, classes=names)
    assert items == [VideoItem(os.path.join(root, "abc_000001_000011.mp4"), -1)]
    bad = _write(
        tmp_path / "bad.csv", "label,youtube_id,time_start,time_end\nx,abc,1,11\ny,abc,z,2\n"
    )
    with pytest.raises(ValueError, match=r"bad\.csv:3: bad youtube_id/time_start/time_end"):
        read_kinetics(bad, root)
    val = _write(tmp_path / "val.csv", "label,youtube_id,time_start,time_end\nunknown,abc,1,11\n")
    with pytest.raises(ValueError, match=r"val\.csv:2: label 'unknown' is not among the 2 classes"):
        read_kinetics(val, root, classes=names)


def test_ssv2(tmp_path):
    labels = _write(
        tmp_path / "labels.json",
        json.dumps(
            {
                "Holding something next to something": "1",
                "Approaching something with your camera": "0",
            }
        ),  # fmt: skip
    )
    split = _write(
        tmp_path / "train.json",
        json.dumps(
            [
                {
                    "id": "78687",
                    "label": "holding potato next to vicks vaporub bottle",
                    "template": "Holding [something] next to [something]",
                    "placeholders": [],
                },
                {"id": "42326", "template": "Approaching [something] with your camera"},
                {"id": "1"},
            ]
        ),  # fmt: skip
    )
    items, names = read_ssv2(split, "/ss", labels)
    assert names == [
        "Approaching something with your camera",
        "Holding something next to something",
    ]
    assert items == [
        VideoItem("/ss/78687.webm", 1),
        VideoItem("/ss/42326.webm", 0),
        VideoItem("/ss/1.webm", -1),
    ]
    bad = _write(
        tmp_path / "bad.json", json.dumps([{"id": "2", "template": "Dancing [something]"}])
    )
    with pytest.raises(ValueError, match=r"bad\.json:1: template 'Dancing something' is not in"):
        read_ssv2(bad, "/ss", labels)


def test_ntu(tmp_path):
    for name in ["S001C002P003R002A013_rgb.avi", "S017C003P020R002A120_rgb.avi", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "S002C001P001R001A001_rgb.mp4").write_bytes(b"")
    items, names = read_ntu(tmp_path)
    assert names is None
    assert sorted((os.path.basename(p), y) for p, y in items) == [
        ("S001C002P003R002A013_rgb.avi", 12),
        ("S002C001P001R001A001_rgb.mp4", 0),
        ("S017C003P020R002A120_rgb.avi", 119),
    ]
    cross_view, _ = read_ntu(tmp_path, keep=lambda f: f["camera"] in (2, 3))
    assert len(cross_view) == 2
    with pytest.raises(ValueError, match=r"root_or_files:2: file name must hold"):
        read_annotations("ntu60", ["S001C002P003R002A013_rgb.avi", "clip.avi"])


def test_generic_list_roundtrip(tmp_path):
    lst = _write(tmp_path / "list.txt", "# comment\na/b c.mp4 3\n/abs/x.mp4 0\n")
    items, names = read_generic_list(lst)
    assert names is None
    assert items == [VideoItem(str(tmp_path / "a/b c.mp4"), 3), VideoItem("/abs/x.mp4", 0)]
    out = tmp_path / "out.txt"
    write_generic_list(out, items, root=tmp_path)
    assert read_generic_list(out, root=tmp_path)[0][0] == items[0]
    bad = _write(tmp_path / "bad.txt", "a.mp4 1\nb.mp4\nc.mp4 -1\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: expected '<path> <label>'"):
        read_generic_list(bad)
    with pytest.raises(ValueError, match="fmt: expected one of"):
        read_annotations("youtube8m", lst)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"vid_name": "a", "label": True}, r"bad\.json:1: label must be an integer, got True"),
        ({"vid_name": "a", "label": 1.5}, r"bad\.json:1: label must be an integer, got 1\.5"),
        ({"vid_name": "a", "label": [1]}, r"bad\.json:1: label must be an integer, got \[1\]"),
        ({"vid_name": "a", "label": None}, r"bad\.json:1: label must be an integer, got None"),
        ({"vid_name": 7, "label": 1}, r"bad\.json:1: 'vid_name' must be a non-empty string"),
        ({"vid_name": " ", "label": 1}, r"bad\.json:1: 'vid_name' must be a non-empty string"),
    ],
)
def test_diving48_malformed_items_name_the_item(tmp_path, entry, message):
    bad = _write(tmp_path / "bad.json", json.dumps([entry]))
    with pytest.raises(ValueError, match=message):
        read_diving48(bad, "/d48")
    # a whole-number float is the integer it writes
    ok = _write(tmp_path / "ok.json", json.dumps([{"vid_name": "a", "label": 2.0}]))
    assert read_diving48(ok, "/d48")[0] == [VideoItem("/d48/a.mp4", 2)]


@pytest.mark.parametrize("start, end", [("inf", "2"), ("1", "nan"), ("1e400", "2")])
def test_kinetics_non_finite_times_name_the_line(tmp_path, start, end):
    bad = _write(
        tmp_path / "bad.csv", f"label,youtube_id,time_start,time_end\nx,abc,{start},{end}\n"
    )
    with pytest.raises(ValueError, match=r"bad\.csv:2: bad youtube_id/time_start/time_end"):
        read_kinetics(bad, "/k")
