"""data_tools.make_shards on real (tiny) H.264 files: what lands in the shards is what the loader reads, bad rows
are skipped with their reason, shards are deterministic, resumable and the same with parallel workers."""

import csv
import json
import subprocess
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds

from data_tools.make_shards import main, make_shards
from wan_train.data.metadata import parse_meta
from wan_train.inference.outputs import write_mp4

REPO = Path(__file__).resolve().parents[2]


def frames(count: int, *, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A moving gradient (compresses to a few hundred bytes a frame) with a seeded offset, so files differ."""
    t = np.arange(count)[:, None, None]
    y, x = np.mgrid[0:height, 0:width]
    value = (x[None] * 3 + y[None] * 2 + t * 7 + seed * 40) % 256
    return np.repeat(value[..., None], 3, axis=-1).astype(np.uint8)


def write_container(path: Path, video: np.ndarray, *, fps: float, fmt: str) -> Path:
    """A non-mp4 container (mov, matroska) through PyAV, like wan_train.inference.outputs.encode_mp4."""
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.options = {"bf": "0"}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def run(input, output, *, shard_size=200, workers=1, min_duration=1.0) -> dict:
    return make_shards(input, output, shard_size=shard_size, workers=workers, min_duration=min_duration)


def read_samples(output: Path) -> dict[str, dict]:
    """Every sample of every shard, through WebDataset as the loader reads them (no decoding)."""
    urls = sorted(str(p) for p in output.glob("shard-*.tar"))
    return {sample["__key__"]: sample for sample in wds.WebDataset(urls, shardshuffle=False)}


def skipped(output: Path) -> list[tuple[str, str]]:
    """(path, reason) of each skipped row, in row order."""
    return [(entry["path"], entry["reason"]) for entry in map(json.loads, (output / "skipped.jsonl").open())]


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Sorted: a/ball.mp4, b.mp4, clip.mov, corrupt.mp4, nocap.mp4, portrait.mp4, short.mp4, weird.mp4."""
    root = tmp_path / "videos"
    (root / "a").mkdir(parents=True)
    write_mp4(root / "a/ball.mp4", frames(24, width=64, height=48, seed=1), fps=12)  # 2 s
    (root / "a/ball.txt").write_text("  a red ball\nbouncing\n")
    write_mp4(root / "b.mp4", frames(36, width=96, height=64, seed=2), fps=24)  # 1.5 s
    (root / "b.json").write_text(json.dumps({"captions": ["first", "second"], "start": 0.25, "end": 1.5}))
    write_container(root / "clip.mov", frames(20, width=64, height=48, seed=3), fps=12, fmt="mov")
    (root / "clip.txt").write_text("a mov clip")
    write_mp4(root / "portrait.mp4", frames(40, width=48, height=64, seed=4), fps=30)
    (root / "portrait.txt").write_text("standing up")
    (root / "portrait.json").write_text(json.dumps({"start": 0.1, "tags": ["other keys are ignored"]}))
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "corrupt.txt").write_text("never decodes")
    write_mp4(root / "short.mp4", frames(8, width=64, height=48, seed=5), fps=24)  # 0.33 s
    (root / "short.txt").write_text("too short")
    write_mp4(root / "nocap.mp4", frames(24, width=64, height=48, seed=6), fps=12)
    write_mp4(root / "weird.mp4", frames(24, width=64, height=48, seed=7), fps=12)
    (root / "weird.json").write_text("{'caption': 'not JSON'}")
    (root / "._ball.mp4").write_bytes(b"macOS resource fork")  # hidden: not a video
    return root


def test_folder_samples_are_the_source_bytes_and_loader_metadata(folder, tmp_path):
    out = tmp_path / "shards"
    result = run(folder, out)
    samples = read_samples(out)
    expected = {  # key = row index in sorted order: ext, fps, num_frames, width, height, captions, window
        "000000000": ("a/ball.mp4", "mp4", 12, 24, 64, 48, ("a red ball\nbouncing",), (0.0, 2.0)),
        "000000001": ("b.mp4", "mp4", 24, 36, 96, 64, ("first", "second"), (0.25, 1.5)),
        "000000002": ("clip.mov", "mov", 12, 20, 64, 48, ("a mov clip",), (0.0, 20 / 12)),
        "000000005": ("portrait.mp4", "mp4", 30, 40, 48, 64, ("standing up",), (0.1, 40 / 30)),
    }
    assert sorted(samples) == sorted(expected)
    for key, (source, ext, fps, count, width, height, captions, window) in expected.items():
        sample = samples[key]
        assert sample[ext] == (folder / source).read_bytes()
        meta = parse_meta(sample["json"], key=key)
        assert (meta.source, meta.fps, meta.num_frames, meta.width, meta.height) == (source, fps, count, width, height)
        assert meta.captions == captions
        assert meta.window == pytest.approx(window)
        assert meta.duration == pytest.approx(count / fps)
    assert result["rows"] == 8 and result["samples"] == 4
    assert result["video_seconds"] == pytest.approx(2.0 + 1.25 + 20 / 12 + 40 / 30 - 0.1, abs=1e-3)


def test_skipped_rows_are_listed_with_their_reason(folder, tmp_path):
    out = tmp_path / "shards"
    result = run(folder, out)
    assert skipped(out) == [("corrupt.mp4", "undecodable"), ("nocap.mp4", "no_caption"), ("short.mp4", "too_short"),
                            ("weird.mp4", "bad_row")]
    assert result["skipped_by_reason"] == {"bad_row": 1, "no_caption": 1, "too_short": 1, "undecodable": 1}
    assert json.loads((out / "summary.json").read_text()) == result
    assert result["bytes"] == (out / "shard-000000.tar").stat().st_size


def test_csv_manifest_with_windows_and_caption_lists(folder, tmp_path):
    manifest = folder / "lists" / "clips.csv"
    manifest.parent.mkdir()
    rows = [
        {"path": "../a/ball.mp4", "captions": json.dumps(["one", "two"]), "start": "0.5", "end": "1.75"},
        {"path": str(folder / "b.mp4"), "caption": "absolute path"},  # no start/end cells: whole video
        {"path": "../portrait.mp4", "caption": "window past the end", "start": "0", "end": "3"},
        {"path": "../gone.mp4", "caption": "missing"},
        {"path": "../clip.mov", "caption": "short window", "start": "0.5", "end": "1.0"},
        {"path": "../clip.mov", "caption": "", "start": "0"},
        {"path": "../clip.mov", "caption": "bad start", "start": "soon"},
    ]
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "caption", "captions", "start", "end"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "shards"
    run(manifest, out)
    samples = read_samples(out)
    assert sorted(samples) == ["000000000", "000000001"]
    first = parse_meta(samples["000000000"]["json"], key="0")
    assert (first.captions, first.window, first.source) == (("one", "two"), (0.5, 1.75), "../a/ball.mp4")
    second = parse_meta(samples["000000001"]["json"], key="1")
    assert second.captions == ("absolute path",) and second.window == (0.0, 1.5)
    assert samples["000000001"]["mp4"] == (folder / "b.mp4").read_bytes()
    assert skipped(out) == [("../portrait.mp4", "bad_window"), ("../gone.mp4", "missing_file"),
                            ("../clip.mov", "too_short"), ("../clip.mov", "no_caption"), ("../clip.mov", "bad_window")]


def test_jsonl_manifest_with_shots(folder, tmp_path):
    manifest = tmp_path / "shots.jsonl"
    lines = [
        json.dumps({"path": str(folder / "a/ball.mp4"), "caption": "two shots", "shots": [[0, 0.75], [0.75, 2.0]]}),
        "",  # blank lines are not rows
        "{not json",
        json.dumps({"path": str(folder / "portrait.mp4"), "captions": ["x", "y"], "start": 0.2,
                    "end": 40 / 30 + 0.02, "shots": [[0.2, 40 / 30 + 0.02]]}),  # < 1 frame past the end: clamped
        json.dumps({"path": str(folder / "b.mp4"), "caption": "bad shots", "shots": [[1.0, 0.5]]}),
        json.dumps({"caption": "no path"}),
        json.dumps({"path": str(folder / "a/ball.txt"), "caption": "not a video"}),
    ]
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "shards"
    run(manifest, out)
    samples = read_samples(out)
    assert sorted(samples) == ["000000000", "000000002"]
    ball = parse_meta(samples["000000000"]["json"], key="0")
    assert ball.shots == ((0.0, 0.75), (0.75, 2.0)) and ball.window == (0.0, 2.0)
    portrait = parse_meta(samples["000000002"]["json"], key="2")
    assert portrait.captions == ("x", "y")
    assert portrait.window == pytest.approx((0.2, 40 / 30)) and portrait.shots == ((0.2, portrait.end),)
    assert skipped(out) == [("shots.jsonl:3", "bad_row"), (str(folder / "b.mp4"), "bad_window"),
                            ("shots.jsonl:6", "bad_row"), (str(folder / "a/ball.txt"), "unsupported_format")]


@pytest.fixture()
def five(tmp_path) -> Path:
    root = tmp_path / "five"
    root.mkdir()
    for i in range(5):
        write_mp4(root / f"v{i}.mp4", frames(12 + 4 * i, width=64, height=48, seed=i), fps=12)
        (root / f"v{i}.txt").write_text(f"clip {i}")
    return root


def test_shard_size_splits_rows_in_sorted_order(five, tmp_path):
    out = tmp_path / "shards"
    result = run(five, out, shard_size=2)
    assert result["shard_files"] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    members = [tarfile.open(out / name).getnames() for name in result["shard_files"]]
    assert members == [["000000000.mp4", "000000000.json", "000000001.mp4", "000000001.json"],
                       ["000000002.mp4", "000000002.json", "000000003.mp4", "000000003.json"],
                       ["000000004.mp4", "000000004.json"]]


def test_a_shard_whose_rows_are_all_skipped_has_no_tar(five, tmp_path):
    (five / "v2.txt").unlink()
    (five / "v3.txt").unlink()
    out = tmp_path / "shards"
    result = run(five, out, shard_size=2)
    assert result["shard_files"] == ["shard-000000.tar", "shard-000002.tar"]  # WebDataset raises on empty tars
    assert not (out / "shard-000001.tar").exists()
    assert sorted(read_samples(out)) == ["000000000", "000000001", "000000004"]
    assert run(five, out, shard_size=2)["shards_kept"] == 3


def test_rerun_keeps_finished_shards_and_rebuilds_a_deleted_one(five, tmp_path):
    (five / "v3.txt").unlink()
    out = tmp_path / "shards"
    first = run(five, out, shard_size=2)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("shard-*.tar")}
    (out / "shard-000001.tar").unlink()
    (out / ".shard-000001.tar.killed.tmp").write_bytes(b"half a shard")  # what a killed run leaves behind
    again = run(five, out, shard_size=2)
    assert (again["shards_written"], again["shards_kept"]) == (1, 2)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("shard-*.tar")}
    assert after["shard-000001.tar"][1] == before["shard-000001.tar"][1]
    assert {k: after[k] for k in ("shard-000000.tar", "shard-000002.tar")} == {
        k: before[k] for k in ("shard-000000.tar", "shard-000002.tar")}
    # the summary and skip list still cover the kept shards
    assert {k: v for k, v in again.items() if not k.startswith("shards_")} == {
        k: v for k, v in first.items() if not k.startswith("shards_")}
    assert skipped(out) == [("v3.mp4", "no_caption")]


def test_a_leftover_temp_file_is_not_a_finished_shard(five, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / ".shard-000000.tar.abc123.tmp").write_bytes(b"partial")
    (out / ".shard-000000.json.abc123.tmp").write_text("{}")
    result = run(five, out, shard_size=2)
    assert (result["shards_written"], result["shards_kept"]) == (3, 0)
    assert "shard-000000.tar" in result["shard_files"]
    assert len(read_samples(out)) == 5


def test_changed_settings_rebuild_instead_of_mixing(five, tmp_path):
    out = tmp_path / "shards"
    run(five, out, shard_size=2)
    result = run(five, out, shard_size=2, min_duration=1.5)  # v0 (1 s) and v1 (1.33 s) now too short
    assert result["shards_written"] == 3
    assert sorted(read_samples(out)) == ["000000002", "000000003", "000000004"]


def test_parallel_workers_write_byte_identical_shards(five, tmp_path):
    (five / "v1.txt").unlink()
    serial = run(five, tmp_path / "serial", shard_size=2, workers=1)
    parallel = run(five, tmp_path / "parallel", shard_size=2, workers=2)
    assert parallel["shard_files"] == serial["shard_files"]
    for name in serial["shard_files"] + ["skipped.jsonl"]:
        assert (tmp_path / "parallel" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()
    # and so is a run at another time or by another user: headers hold no clock time or owner
    headers = {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in tarfile.open(tmp_path / "serial/shard-000000.tar")}
    assert headers == {(0, 0, 0, "", "")}


def test_bad_input_fails_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(tmp_path / "nowhere", tmp_path / "out")
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,caption\nx.mp4,hi\n")
    with pytest.raises(ValueError, match="m.csv.*'path'"):
        run(manifest, tmp_path / "out")
    with pytest.raises(ValueError, match="--shard-size"):
        run(tmp_path, tmp_path / "out", shard_size=0)
    assert main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_cli_with_parallel_workers(five, tmp_path):
    command = [sys.executable, "-m", "data_tools.make_shards"]
    help_text = subprocess.run([*command, "--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert all(flag in help_text for flag in ("--input", "--output", "--shard-size", "--workers", "--min-duration"))
    out = tmp_path / "out"
    args = ["--input", str(five), "--output", str(out), "--shard-size", "2", "--workers", "2"]
    done = subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "samples" in done.stderr  # the summary table
    assert json.loads((out / "summary.json").read_text())["samples"] == 5
    assert len(read_samples(out)) == 5


def test_cli_exit_status_when_every_row_is_skipped(five, tmp_path, capsys):
    assert main(["--input", str(five), "--output", str(tmp_path / "out"), "--min-duration", "60"]) == 1
    assert capsys.readouterr().err.count("too_short") >= 5
