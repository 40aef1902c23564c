"""Bad data named, counted and survived: metadata numbers checked, tar members that make no sample, a damaged
shard's lost samples counted from its stats, empty captions flagged, and every event named once in skipped.jsonl
(appended whole by many writers)."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.data_helpers import video_sample, write_shard
from wan_train.data.buckets import BucketTable
from wan_train.data.errors import SampleError
from wan_train.data.metadata import parse_meta
from wan_train.data.shards import read_samples, shard_samples, stats_path
from wan_train.data.skiplog import SkipLog, summary
from wan_train.data.stream import BucketedStream
from wan_train.data.video import VideoSource
from wan_train.fileio.jsonl import append_jsonl, read_jsonl

ROOT = Path(__file__).resolve().parents[2]
TABLE = BucketTable(resolutions=("144p",), durations=(0.5, 1.0), fps=8.0)
GOOD = {"caption": "a clip", "fps": 12.0, "num_frames": 24, "width": 96, "height": 64, "duration": 2.0}


def raw_json(**changes) -> str:
    fields = {**GOOD, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...})  # NaN / Infinity as Python's json writes


@pytest.mark.parametrize("changes, message", [
    ({"fps": float("nan")}, "fps=nan must be a finite number"),
    ({"fps": float("inf")}, "fps=inf must be a finite number"),
    ({"duration": float("inf")}, "duration=inf must be a finite number"),
    ({"width": float("inf")}, "width=inf must be a finite number"),
    ({"height": -float("inf")}, "height=-inf must be a finite number"),
    ({"fps": "24"}, "fps='24' must be a finite number"),
    ({"num_frames": True}, "num_frames=True must be a finite number"),
    ({"width": 65536, "height": 65536}, r"width=65536 is outside \[1, 16384\]"),
    ({"width": 0}, r"width=0 is outside \[1, 16384\]"),
    ({"num_frames": 24.5}, "num_frames=24.5 must be a whole number"),
    ({"fps": 0}, r"fps=0 is outside \(0, 1000\]"),
    ({"fps": 1e9}, r"fps=1000000000.0 is outside \(0, 1000\]"),
    ({"duration": 1e6}, r"duration=1000000.0 is outside \(0, 86400\]"),
    ({"duration": 500.0}, "duration 500.0 s is longer than its 24 frames at 12 fps"),
    ({"start": float("nan")}, "start=nan must be a finite number"),
    ({"end": float("inf")}, "end=inf must be a finite number"),
    ({"shots": [[0, float("nan")]]}, r"shots\[0\]=\[0, nan\] must be \[start, end\]"),
    ({"shots": [[1.0, 0.5]]}, r"shots\[0\]=\[1.0, 0.5\] must be \[start, end\]"),
    ({"shots": "all"}, "'shots' must be a list"),
    ({"fps": ...}, r"lacks \['fps'\]"),
])
def test_metadata_numbers_must_be_finite_and_sane(changes, message):
    with pytest.raises(SampleError, match=f"shard.tar:000007: .*{message}") as error:
        parse_meta(raw_json(**changes), key="shard.tar:000007")
    assert error.value.reason == "bad_metadata"


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"null", b"\xff\xfe", b"[" * 100_000])
def test_metadata_that_is_not_a_json_object_is_bad(raw):
    with pytest.raises(SampleError) as error:
        parse_meta(raw, key="k")
    assert error.value.reason == "bad_metadata"


def test_whitespace_captions_become_the_empty_prompt():
    meta = parse_meta(raw_json(caption=None, captions=["  \n", "a clip"]), key="k")
    assert meta.captions == ("", "a clip")


NOT_FILES = (tarfile.SYMTYPE, tarfile.DIRTYPE)


def _tar(path, members):
    """members: (name, bytes) or (name, tarfile.SYMTYPE / DIRTYPE) for a non-file."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data in NOT_FILES:
                info.type, info.linkname = data, "elsewhere"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_members_that_make_no_sample_are_named_in_place(tmp_path):
    url = _tar(tmp_path / "s.tar", [
        ("a.json", b"{}"), ("a.mp4", b"v"),
        ("README", b"hello"),  # no extension
        ("b.json", b"{}"), ("b.json", b"{}"),  # twice
        ("c.mp4", b"x" * 5000), ("c.json", b"{}"),  # over the size limit
        ("d.mp4", tarfile.SYMTYPE),  # a link, not a file
        ("dir/", tarfile.DIRTYPE),
        ("e.JSON", b"{}"), ("e.Mp4", b"v"),
    ])
    samples = list(shard_samples(url, max_member_bytes=4096))
    got = [(s["__key__"], s["__error__"].reason if "__error__" in s else sorted(k for k in s if k[0] != "_"))
           for s in samples]
    # a member that is no sample's comes out as soon as it is read, the sample around it when it is complete
    assert got == [("README", "stray_member"), ("a", ["json", "mp4"]), ("b", "duplicate_member"),
                   ("d.mp4", "stray_member"), ("c", "too_large"), ("e", ["json", "mp4"])]
    assert "is not a regular file" in str(samples[3]["__error__"])
    assert ".mp4 is 0.00477 MiB, over data.max_sample_mb=0.00390625" in str(samples[4]["__error__"])


def test_a_truncated_shard_counts_the_samples_it_lost_from_its_stats(tmp_path):
    samples = [video_sample(f"{i:06d}", frames=24, width=96, height=64, fps=12.0) for i in range(10)]
    url = str(write_shard(tmp_path / "shard-000000.tar", samples))
    stats_path(url).write_text(json.dumps({"samples": 10}))  # as data_tools.make_shards writes it
    data = open(url, "rb").read()
    offset = tarfile.open(url).getmember("000003.mp4").offset_data + 100
    open(url, "wb").write(data[:offset])  # cut inside sample 3's video
    errors = []
    good = [s["__key__"] for s in read_samples([url], on_error=errors.append)]
    assert good == ["000000", "000001", "000002"]
    assert [(e.key, e.count) for e in errors] == [("000003", 1), (None, 6)]
    assert "6 more sample(s) lost (its stats say 10, 3 were read)" in str(errors[1])
    stats_path(url).unlink()  # without stats, only the cut sample is known
    errors.clear()
    list(read_samples([url], on_error=errors.append))
    assert [(e.key, e.count) for e in errors] == [("000003", 1)]
    assert "the samples after the damage are lost (how many is unknown" in str(errors[0])
    empty = tmp_path / "shard-000001.tar"
    empty.write_bytes(b"")
    stats_path(str(empty)).write_text(json.dumps({"samples": 4}))
    errors.clear()
    list(read_samples([str(empty)], on_error=errors.append))
    assert [(e.key, e.count, e.reason) for e in errors] == [(None, 4, "unreadable_shard")]


def test_the_stream_reports_every_skip_and_flag_once_with_its_shard_and_key(tmp_path):
    samples = [video_sample(f"{i:06d}", frames=24, width=96, height=64, fps=12.0) for i in range(6)]
    samples[1][1]["json"] = raw_json(fps=float("nan")).encode()
    samples[2] = video_sample("000002", frames=24, width=96, height=64, fps=12.0, captions=[""])
    samples[3][1]["mp4"] = b""
    url = str(write_shard(tmp_path / "shard-000000.tar", samples))
    batches = list(BucketedStream([url], VideoSource(TABLE), batch_size=1, seed=0, shuffle_buffer=1, epochs=2))
    events = [e for b in batches for e in b["_events"]]
    assert sorted((e["epoch"], e["key"], e["reason"], e["skipped"]) for e in events) == [
        (epoch, key, reason, reason != "empty_caption") for epoch in (0, 1)
        for key, reason in (("000001", "bad_metadata"), ("000002", "empty_caption"), ("000003", "undecodable"))]
    assert all(e["shard"] == url and e["count"] == 1 and e["worker"] == 0 for e in events)
    final = batches[-1]["_position"]["state"]
    assert final["skipped"] == {"bad_metadata": 2, "undecodable": 2} and final["flagged"] == {"empty_caption": 2}
    assert [b["prompt"] for b in batches if b["key"] == ["000002"]] == [[""], [""]]  # trained, unconditional


def test_the_skip_log_names_each_event_once_across_a_resume(tmp_path, caplog):
    path = tmp_path / "skipped.jsonl"
    event = {"shard": "s.tar", "key": "k1", "reason": "undecodable", "detail": "s.tar:k1: junk", "count": 1,
             "skipped": True, "epoch": 0, "worker": 0}
    flag = {**event, "key": "k2", "reason": "empty_caption", "skipped": False, "detail": "s.tar:k2: empty"}
    first = SkipLog(path, rank=0, first=1, every=0.0)
    first.record([event, flag], step=3)
    # a resumed run meets k1 again (after its checkpoint, before the interruption) and then a new sample
    resumed = SkipLog(path, rank=0)
    resumed.record([event, {**event, "key": "k3"}], step=2)
    records = read_jsonl(path)
    assert [(r["key"], r["step"], r["split"]) for r in records] == [("k1", 3, "train"), ("k2", 3, "train"),
                                                                     ("k3", 2, "train")]
    assert summary(path) == (f"data: skipped 2 samples (undecodable: 2); trained 1 despite (empty_caption: 1); "
                             f"each is named in {path}")
    lines = [r.getMessage() for r in caplog.records if r.name == "wan_train.data.skiplog"]
    assert lines[0].startswith("data: skipped (undecodable): s.tar:k1: junk (further ones: one line a minute")
    assert any("1 more samples skipped or flagged (empty_caption: 1)" in line for line in lines)


APPENDER = """
import sys
from wan_train.fileio.jsonl import append_jsonl
path, writer = sys.argv[1], int(sys.argv[2])
for i in range(50):
    append_jsonl(path, [{"writer": writer, "i": i, "pad": "x" * 3000}, {"writer": writer, "i": i, "second": 1}])
"""


def test_appends_from_many_processes_stay_whole_lines(tmp_path):
    path = tmp_path / "skipped.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(w)], cwd=ROOT) for w in range(4)]
    assert [w.wait() for w in writers] == [0] * 4
    records = read_jsonl(path)
    assert len(records) == 4 * 50 * 2 and len(path.read_bytes().splitlines()) == 400
    for w in range(4):  # each block of two lines stays together
        mine = [(r["i"], "second" in r) for r in records if r["writer"] == w]
        assert mine == [(i, second) for i in range(50) for second in (False, True)]


def test_a_line_cut_by_a_crash_is_ignored_and_the_next_append_starts_fresh(tmp_path):
    path = tmp_path / "skipped.jsonl"
    append_jsonl(path, [{"a": 1}])
    with open(path, "ab") as f:
        f.write(b'{"b": 2, "cut')  # a writer killed mid-line
    append_jsonl(path, [{"c": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"c": 3}]
