"""Shot detection on real H.264 files with hard cuts at known frames, and the manifest the CLI writes for
make_shards (one row per video with its shots, or one row per shot)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from data_tools.split_shots import detect_shots, hsv_planes, main, split_shots
from wan_train.inference.outputs import encode_mp4, write_mp4

FPS = 20.0


def segment(num_frames: int, *, height: int, width: int, background, stripes, speed: float, seed: int) -> np.ndarray:
    """A shot: a background colour with a drifting stripe texture and a moving disc (gentle motion inside the
    shot, so only the cuts between shots change the whole picture)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    t = np.arange(num_frames)[:, None, None]
    texture = (np.sin((x[None] + speed * t) * 2 * np.pi / 24) > 0)[..., None]
    frames = np.where(texture, np.array(stripes), np.array(background)).astype(np.float32)
    cx, cy = width * rng.uniform(0.2, 0.4) + speed * t, height / 2
    disc = ((x[None] - cx) ** 2 + (y[None] - cy) ** 2 < (height / 5) ** 2)[..., None]
    return np.where(disc, np.array([255, 255, 255]), frames).astype(np.uint8)


def video(lengths: list[int], *, height: int = 96, width: int = 160) -> np.ndarray:
    palette = [((20, 30, 120), (60, 80, 170)), ((200, 60, 40), (230, 120, 60)), ((30, 150, 60), (80, 190, 90)),
               ((120, 120, 120), (160, 160, 160))]
    return np.concatenate([segment(n, height=height, width=width, background=palette[i % 4][0],
                                   stripes=palette[i % 4][1], speed=1.5, seed=i) for i, n in enumerate(lengths)])


def cut_frames(shots: list[tuple[float, float]]) -> list[int]:
    return [round(start * FPS) for start, _ in shots[1:]]


@pytest.fixture(scope="module")
def three_shots(tmp_path_factory):
    """Cuts at frames 25 and 45 of 75, at the scan width (160 px) and wider (decoded downscaled)."""
    root = tmp_path_factory.mktemp("shots")
    write_mp4(root / "narrow.mp4", video([25, 20, 30]), fps=FPS)
    write_mp4(root / "wide.mp4", video([25, 20, 30], height=180, width=320), fps=FPS)
    return root


def test_hsv_follows_opencv_8bit_convention():
    # OpenCV 8-bit HSV: H = degrees / 2 in [0, 180), S and V in 0..255; greys have H = S = 0
    pixels = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 0, 128], [0, 0, 0]]]],
                      dtype=np.uint8)
    h, s, v = hsv_planes(pixels)[0, :, 0]
    assert h.tolist() == [0, 60, 120, 0, 165, 0]
    assert s.tolist() == [255, 255, 255, 0, 255, 0]
    assert v.tolist() == [255, 255, 255, 128, 255, 0]


@pytest.mark.parametrize("name", ["narrow.mp4", "wide.mp4"])
def test_cuts_found_at_the_right_frames(three_shots, name):
    shots = detect_shots(three_shots / name)
    assert len(shots) == 3, shots  # motion inside a shot (drifting stripes, moving disc) makes no cut
    assert all(abs(got - want) <= 1 for got, want in zip(cut_frames(shots), [25, 45], strict=True))
    assert shots[0][0] == 0.0 and shots[-1][1] == pytest.approx(75 / FPS)
    assert all(a[1] == b[0] for a, b in zip(shots, shots[1:], strict=False))  # the shots tile the video


def test_bytes_and_window(three_shots):
    data = (three_shots / "narrow.mp4").read_bytes()
    assert detect_shots(data) == detect_shots(three_shots / "narrow.mp4")
    # a window [0.5 s, 3.0 s) keeps both cuts and is clipped to its own ends
    shots = detect_shots(data, start=0.5, end=3.0)
    assert shots[0][0] == 0.5 and shots[-1][1] == 3.0 and cut_frames(shots) == cut_frames(detect_shots(data))


def test_min_scene_len(tmp_path):
    path = write_mp4(tmp_path / "quick.mp4", video([10, 6, 34]), fps=FPS)
    assert cut_frames(detect_shots(path, min_scene_len=5)) == [10, 16]
    # the cut at frame 10 comes too soon after the start, the one at 16 is 16 >= 15 frames in
    assert cut_frames(detect_shots(path, min_scene_len=15)) == [16]
    assert detect_shots(path, threshold=255.0) == [(0.0, 50 / FPS)]


@pytest.fixture
def captioned_folder(three_shots, tmp_path):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.mp4").write_bytes((three_shots / "narrow.mp4").read_bytes())
    (folder / "a.txt").write_text("three shots of stripes\n")
    (folder / "sub" / "b.mp4").write_bytes(encode_mp4(video([40]), fps=FPS))
    (folder / "sub" / "b.json").write_text(json.dumps({"captions": ["one shot", "a single shot"], "other": 1}))
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return folder


def test_folder_to_per_video_manifest(captioned_folder):
    output = captioned_folder / "shots.jsonl"
    result = split_shots(captioned_folder, output, workers=2)
    rows = {row["path"]: row for row in map(json.loads, output.read_text().splitlines())}
    assert set(rows) == {"a.mp4", "sub/b.mp4"}  # relative to the manifest's folder
    assert rows["a.mp4"]["caption"] == "three shots of stripes"
    assert rows["sub/b.mp4"]["captions"] == ["one shot", "a single shot"]
    assert [round(a * FPS) for a, _ in rows["a.mp4"]["shots"]] == [0, 25, 45]
    assert rows["sub/b.mp4"]["shots"] == [[0.0, 2.0]]
    assert result["videos"] == 2 and result["shots"] == 4 and result["skipped"] == 1
    assert result["mean_shot_seconds"] == pytest.approx((75 + 40) / FPS / 4)
    name, reason, message = result["skipped_list"][0]
    assert name.endswith("broken.mp4") and reason == "undecodable" and "broken.mp4" in message


def test_manifest_to_per_shot_rows(three_shots, tmp_path):
    manifest = tmp_path / "in" / "clips.jsonl"
    manifest.parent.mkdir()
    rows = [{"path": str(three_shots / "narrow.mp4"), "caption": "stripes", "source": "cam1"},
            {"path": "missing.mp4", "caption": "gone"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    output = tmp_path / "out" / "shots.jsonl"
    # shots are 1.25 s, 1.0 s and 1.5 s long: the 1.0 s one is dropped at --min-shot-duration 1.1
    result = split_shots(manifest, output, per_shot=True, min_shot_duration=1.1)
    out = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(round(r["start"] * FPS), round(r["end"] * FPS)) for r in out] == [(0, 25), (45, 75)]
    assert all(r["caption"] == "stripes" and r["source"] == "cam1" and "shots" not in r for r in out)
    assert out[0]["path"] == str(three_shots / "narrow.mp4")  # outside the output folder: absolute
    assert result["rows"] == 2 and result["dropped_short_shots"] == 1
    reasons = sorted(reason for _, reason, _ in result["skipped_list"])
    assert reasons == ["bad_metadata", "missing_file"]  # the unparsable line, the missing video


def test_csv_manifest_like_make_shards_reads_it(three_shots, tmp_path):
    manifest = tmp_path / "clips.csv"
    manifest.write_text(f"path,caption,camera\n{three_shots / 'narrow.mp4'},stripes,A\nnotes.txt,,\n")
    result = split_shots(manifest, tmp_path / "shots.jsonl")
    (row,) = map(json.loads, (tmp_path / "shots.jsonl").read_text().splitlines())
    assert (row["caption"], row["camera"], len(row["shots"])) == ("stripes", "A", 3)
    assert [(name, reason) for name, reason, _ in result["skipped_list"]] == [("notes.txt", "unsupported_format")]


def test_cli_exit_status(captioned_folder, tmp_path):
    output = tmp_path / "cli.jsonl"
    assert main(["--input", str(captioned_folder), "--output", str(output), "--per-shot"]) == 0
    # shots of 1.25, 1.0, 1.5 s and the 2 s single shot; none under the default --min-shot-duration of 1 s
    assert len(output.read_text().splitlines()) == 4
    assert main(["--input", str(tmp_path / "nothing-here"), "--output", str(output)]) == 2
    assert main(["--input", str(captioned_folder), "--output", str(output), "--threshold", "-1"]) == 2
    assert len(output.read_text().splitlines()) == 4  # a failed run leaves the earlier output alone


def test_help_runs():
    done = subprocess.run([sys.executable, "-m", "data_tools.split_shots", "--help"], capture_output=True, text=True,
                          check=True)
    assert "--per-shot" in done.stdout and "nothing is re-encoded" in done.stdout
