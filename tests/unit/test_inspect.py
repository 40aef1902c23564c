"""data_tools.inspect over real shards: tar files of tiny H.264 mp4s and ClipMeta json, with the kinds of damage
the tool must report (undecodable video, wrong num_frames, a .json lacking a field, a missing member, corrupt and
truncated tars)."""

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from data_tools.inspect import expand_urls, inspect_shards, main
from wan_train.data.buckets import BucketTable
from wan_train.data.metadata import ClipMeta
from wan_train.inference.outputs import encode_mp4

# durations 1 s and 2 s at 8 fps -> 9- and 17-frame buckets; a clip needs more than 1 s (2 s) of video for them
TABLE = BucketTable(resolutions=("480p",), durations=(1.0, 2.0), fps=8.0)
TABLE_ARGS = ["--resolutions", "480p", "--durations", "1", "2", "--fps", "8"]


def _video(width, height, frames, fps, *, seed):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, None, :, None]
    pixels = ramp + 8 * np.arange(frames, dtype=np.float32)[:, None, None, None] + rng.normal(0, 4, (frames, height,
                                                                                                  width, 3))
    return encode_mp4(pixels.clip(0, 255).astype(np.uint8), fps=fps)


def _meta(width, height, frames, fps, captions, **extra):
    return ClipMeta(captions=tuple(captions), fps=fps, num_frames=frames, width=width, height=height,
                    duration=frames / fps, source="test", **extra).to_json()


def _sample(key, width, height, frames, fps, captions, **extra):
    return {"mp4": _video(width, height, frames, fps, seed=int(key)), "json": _meta(width, height, frames, fps,
                                                                                   captions, **extra)}


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, value in members.items():
                data = value if isinstance(value, bytes) else json.dumps(value).encode()
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _shard0():
    return {
        "000000000": _sample("0", 96, 64, 24, 16.0, ["a red ball rolls"]),  # 1.5 s
        "000000001": _sample("1", 64, 96, 60, 24.0, ["two words", "three more words"]),  # 2.5 s portrait
        "000000002": _sample("2", 96, 64, 8, 12.0, [""]),  # 0.67 s: too short for any bucket
        "000000003": {"mp4": np.random.default_rng(3).bytes(4000),
                      "json": _meta(96, 64, 16, 16.0, ["corrupt video here"])},
    }


def _shard1():
    wrong_count = _sample("4", 96, 64, 20, 16.0, ["wrong frame count in json"])
    wrong_count["json"]["num_frames"] = 30
    lacks_fps = _sample("5", 96, 64, 16, 16.0, ["no fps"])
    del lacks_fps["json"]["fps"]
    return {
        "000000004": wrong_count,
        "000000005": lacks_fps,
        "000000006": {"json": _meta(64, 64, 18, 12.0, ["no video"])},
        # 3 s video, window 0.5..3 s; its longest shot is 1.5 s, so it gets the 9-frame bucket, not the 17
        "000000007": _sample("7", 96, 64, 36, 12.0, ["a cat sits on a mat"], start=0.5, end=3.0,
                             shots=((0.5, 1.5), (1.5, 3.0))),
        "000000008": {"mp4": _video(96, 64, 8, 16.0, seed=8)},
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return [str(_write_tar(root / f"shard-{i:06d}.tar", samples)) for i, samples in enumerate((_shard0(), _shard1()))]


EXPECTED_BAD = {
    ("shard-000000.tar", "000000003", "undecodable"),
    ("shard-000001.tar", "000000004", "frame_count_mismatch"),
    ("shard-000001.tar", "000000005", "bad_metadata"),
    ("shard-000001.tar", "000000006", "missing_field"),
    ("shard-000001.tar", "000000008", "missing_field"),
}


def _bad_set(stats):
    return {(b["shard"].rsplit("/", 1)[-1], b["key"], b["reason"]) for b in stats["bad"]}


def test_counts_histograms_and_captions(shards):
    stats = inspect_shards(shards, table=TABLE, decode=True, workers=1)
    assert (stats["shards"], stats["samples"], stats["decoded"]) == (2, 9, 4)
    # the usable windows of the 7 samples whose .json parses (all but 5 and 8)
    assert stats["seconds"] == pytest.approx(1.5 + 2.5 + 8 / 12 + 1.0 + 1.25 + 1.5 + 2.5)
    assert stats["hours"] == pytest.approx(stats["seconds"] / 3600)
    hist = stats["histograms"]
    assert list(hist["duration"].items()) == [("0-1 s", 1), ("1-2 s", 4), ("2-3 s", 2)]
    assert hist["resolution"] == {"96x64": 5, "64x96": 1, "64x64": 1}
    assert hist["orientation"] == {"landscape": 5, "portrait": 1, "square": 1}
    assert list(hist["fps"].items()) == [("12", 3), ("16", 3), ("24", 1)]
    # 3:2 -> 4:3 (720x544), 2:3 -> 3:4, 1:1; every size upscales, so the smallest resolution (480p)
    assert hist["bucket"] == {"720x544x9": 3, "too short": 2, "544x720x17": 1, "624x624x9": 1}
    # words per caption: 4 | 2, 3 | 0 | 3 | 5 | 2 | 6
    assert stats["captions"] == {"captions": 8, "min": 0, "mean": pytest.approx(25 / 8), "median": 3, "max": 6,
                                 "several": 1, "empty": 1}


def test_reports_exactly_the_bad_samples(shards):
    stats = inspect_shards(shards, table=TABLE, decode=True, workers=1)
    assert _bad_set(stats) == EXPECTED_BAD
    messages = {b["key"]: b["message"] for b in stats["bad"]}
    assert "30 frames" in messages["000000004"] and "20" in messages["000000004"]
    assert "fps" in messages["000000005"]
    assert "no video member" in messages["000000006"] and "no .json member" in messages["000000008"]


def test_no_decode_checks_metadata_only(shards):
    stats = inspect_shards(shards, table=TABLE, decode=False, workers=1)
    assert _bad_set(stats) == {b for b in EXPECTED_BAD if b[2] in ("bad_metadata", "missing_field")}
    assert stats["decoded"] == 0 and stats["samples"] == 9
    assert stats["histograms"] == inspect_shards(shards, table=TABLE, decode=True, workers=1)["histograms"]


def test_two_workers_give_the_same_result(shards):
    assert inspect_shards(shards, table=TABLE, decode=True, workers=2) == inspect_shards(
        shards, table=TABLE, decode=True, workers=1)


def test_cli_exit_code_and_jsonl_report(shards, tmp_path):
    pattern = shards[0].replace("shard-000000.tar", "shard-{000000..000001}.tar")
    report = tmp_path / "bad.jsonl"
    assert main(["--shards", pattern, *TABLE_ARGS, "--report", str(report)]) == 1
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert {(b["shard"].rsplit("/", 1)[-1], b["key"], b["reason"]) for b in lines} == EXPECTED_BAD
    assert all(set(b) == {"shard", "key", "reason", "message"} for b in lines)


def test_cli_clean_shard_exits_zero(tmp_path):
    shard = _write_tar(tmp_path / "clean.tar", {"000000000": _sample("0", 96, 64, 24, 16.0, ["fine"])})
    report = tmp_path / "bad.jsonl"
    assert main(["--shards", str(shard), *TABLE_ARGS, "--report", str(report)]) == 0
    assert report.read_text() == ""


def test_corrupt_and_truncated_shards_are_reported_not_fatal(shards, tmp_path):
    good = open(shards[0], "rb").read()
    offset = tarfile.open(shards[0]).getmember("000000002.mp4").offset  # header of sample 2's first member
    overwritten = bytearray(good)
    overwritten[offset:offset + 512] = np.random.default_rng(1).bytes(512)
    broken = {
        "garbage.tar": np.random.default_rng(0).bytes(5000),
        "truncated.tar": good[:offset + 700],  # inside sample 2's video data
        # tarfile alone ends these two at sample 2 without a word: a cut at a member boundary, a bad header
        "cut.tar": good[:offset],
        "overwritten.tar": bytes(overwritten),
    }
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
    urls = [str(tmp_path / name) for name in (*broken, "missing.tar")]
    stats = inspect_shards([*urls, shards[1]], table=TABLE, decode=False, workers=1)
    unreadable = {b["shard"].rsplit("/", 1)[-1]: b for b in stats["bad"] if b["reason"] == "unreadable_shard"}
    assert set(unreadable) == {*broken, "missing.tar"}
    assert all(b["key"] is None for b in unreadable.values())
    assert f"byte {offset}" in unreadable["cut.tar"]["message"]
    assert f"byte {offset}" in unreadable["overwritten.tar"]["message"]
    # the damaged shards still count sample 0; sample 1 is cut off where the damage is in the header of sample 2's
    # first member (cut, overwritten), and complete where it is in that member's data (truncated)
    assert (stats["shards"], stats["samples"]) == (6, 3 + 1 + 5)
    assert _bad_set(stats) - {(name, None, "unreadable_shard") for name in unreadable} == {
        b for b in EXPECTED_BAD if b[0] == "shard-000001.tar" and b[2] != "frame_count_mismatch"}


def test_expand_urls(shards, tmp_path):
    root = shards[0].rsplit("/", 1)[0]
    assert expand_urls([f"{root}/shard-{{000000..000001}}.tar"]) == shards
    assert expand_urls([root]) == shards
    assert expand_urls([f"{root}/shard-*.tar", shards[0]]) == shards  # globbed, deduplicated
    assert expand_urls(["pipe:cat a.tar", "https://host/s-{0..1}.tar"]) == [
        "pipe:cat a.tar", "https://host/s-0.tar", "https://host/s-1.tar"]
    assert expand_urls([str(tmp_path / "nothing-*.tar")]) == []


def test_pipe_urls_are_read_through_gopen(shards):
    stats = inspect_shards([f"pipe:cat {shards[1]}"], table=TABLE, decode=False, workers=1)
    assert stats["samples"] == 5


def test_cli_rejects_bad_arguments(shards, tmp_path):
    with pytest.raises(SystemExit) as error:
        main(["--shards", str(tmp_path / "none-*.tar")])
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        main(["--shards", shards[0], "--resolutions", "360p"])
    assert error.value.code == 2


def test_help_runs():
    result = subprocess.run([sys.executable, "-m", "data_tools.inspect", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--shards" in result.stdout and "--no-decode" in result.stdout


def test_without_buckets_it_chooses_ones_that_fit_the_data(shards):
    # spans 1.5, 2.5, 0.67, 1.0, 1.25, 1.5, 2.5 s at 8 fps: 1 s (9 frames) fits 5 of 7, under 90%, so the
    # shortest duration that makes frames (5 at 8 fps: 0.625 s) fits them all; every clip is below the smallest
    # resolution (96p): that one
    stats = inspect_shards(shards, decode=False, workers=1, fps=8.0)
    assert stats["buckets"] == {"resolutions": ["96p"], "durations": [0.625], "fps": 8.0, "chosen": True,
                                "too_short": 0, "suggested": None}
    assert "too short" not in stats["histograms"]["bucket"]
    given = inspect_shards(shards, decode=False, workers=1, table=BucketTable(resolutions=("480p",),
                                                                                durations=(5.0,), fps=8.0))
    assert given["buckets"]["too_short"] == 7 and given["buckets"]["suggested"] == [0.625]


def test_the_cli_says_which_buckets_it_used_and_which_would_fit(shards, capsys):
    main(["--shards", *shards, "--no-decode", "--fps", "8"])
    assert "buckets: chosen to fit the data (none given): --resolutions 96p --durations 0.625 --fps 8" in \
        capsys.readouterr().err
    main(["--shards", *shards, "--no-decode", "--fps", "8", "--resolutions", "480p", "--durations", "5"])
    assert ("buckets: --resolutions 480p --durations 5 --fps 8; 7 samples (78%) are too short for them "
            "(--durations 0.625 would fit at least 90%)") in capsys.readouterr().err
