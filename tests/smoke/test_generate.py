"""generate.py end to end on the CPU: a short quickstart run (tests/smoke/conftest.py) samples and scores
validation videos into its run folder, and `python generate.py ckpt=<run folder> prompt=... out=x.mp4` writes a
video decord reads with the expected frame count and size, its preview and its settings."""

import json
import subprocess
import sys
from pathlib import Path

import decord
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_training_writes_validation_samples(trained):
    samples = sorted((trained / "samples" / "step_0000002").iterdir())
    names = [p.name for p in samples]
    assert names == ["prompt_00.gif", "prompt_00.json", "prompt_00.mp4", "prompt_01.gif", "prompt_01.json",
                     "prompt_01.mp4"]
    video = decord.VideoReader(str(trained / "samples" / "step_0000002" / "prompt_00.mp4"))
    assert len(video) == 5 and video[0].shape == (144, 256, 3)
    meta = json.loads((trained / "samples" / "step_0000002" / "prompt_01.json").read_text())
    assert meta["seed"] == 1 and meta["step"] == 2 and meta["settings"]["steps"] == 2


def test_generate_py_writes_a_video_from_a_run_folder(trained, tmp_path):
    out = tmp_path / "x.mp4"
    result = subprocess.run([sys.executable, "generate.py", f"ckpt={trained}", "prompt=a red circle", f"out={out}",
                             "steps=3", "seed=5", "num_frames=9"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    video = decord.VideoReader(str(out))
    assert len(video) == 9 and video[0].shape == (144, 256, 3)  # the quickstart model's official size
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["prompt"] == "a red circle" and meta["seed"] == 5 and meta["settings"]["steps"] == 3
    assert meta["checkpoint"]["dit"].endswith("step=0000002.ckpt (step 2)")
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize("args, message", [
    ({"ckpt": "/nonexistent/run"}, "ckpt=/nonexistent/run: no such file or folder"),
    ({"task": "i2v", "image": "whatever.png"}, "task='i2v': this t2v model"),
    ({"width": "250"}, "width=250 is not a multiple of 16"),
])
def test_generate_py_errors_are_clear(trained, tmp_path, args, message):
    argv = {"ckpt": str(trained), "prompt": "x", "out": str(tmp_path / "x.mp4"), "steps": "1", **args}
    result = subprocess.run([sys.executable, "generate.py", *(f"{k}={v}" for k, v in argv.items())], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_validation_metrics_are_logged_and_kept_with_each_video(trained):
    import csv

    rows = list(csv.DictReader((trained / "csv" / "version_0" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("val/clip_score")]
    assert [int(r["step"]) for r in logged] == [2]
    assert -1 <= float(logged[0]["val/clip_score"]) <= 1 and 0 <= float(logged[0]["val/temporal_flickering"]) <= 1
    scores = [json.loads((trained / "samples" / "step_0000002" / f"prompt_{i:02d}.json").read_text())["scores"]
              for i in range(2)]
    assert set(scores[0]) == {"clip_score", "temporal_flickering"}
    mean = sum(s["clip_score"] for s in scores) / 2
    assert abs(mean - float(logged[0]["val/clip_score"])) < 1e-6
