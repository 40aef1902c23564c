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
    assert len(video) == 5 and video[0].shape == (96, 176, 3)  # the recipe's validation size, its data's
    meta = json.loads((trained / "samples" / "step_0000002" / "prompt_01.json").read_text())
    assert meta["seed"] == 1 and meta["step"] == 2 and meta["settings"]["steps"] == 2
    assert meta["settings"]["guidance_interval"] == [0.0, 0.8]


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


def test_generated_videos_carry_all_three_marks_and_verify_finds_them(trained, tmp_path):
    """generate.py -> python -m wan_train.marking verify: the provenance record in the tags, a C2PA manifest that
    validates (this installation's signer: Valid, not Trusted) and the watermark carrying the same output id; a
    one-byte change reads as tampered; marking.enabled=false writes an unmarked video and says so. The quickstart
    model after 2 steps draws new 8-px block noise (std ~57 levels) in every frame, the worst content for a mark at
    42 dB: the mark is found here at strength 8, its id not always (the output id, a hash that includes this
    session's paths, changes from run to run); tests/unit/test_marking_watermark.py reads the id back from
    re-encoded videos and benchmarks/watermark.py measures the default strength."""
    out = tmp_path / "x.mp4"
    result = subprocess.run([sys.executable, "generate.py", f"ckpt={trained}", "prompt=a red circle", f"out={out}",
                             "steps=3", "seed=5", "num_frames=33", "marking.watermark.strength=8"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    verify = [sys.executable, "-m", "wan_train.marking", "verify", "--json"]
    checked = subprocess.run([*verify, str(out)], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    [report] = json.loads(checked.stdout)
    record = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert report["verdict"] == "marked" and report["metadata"] == record
    assert report["c2pa"]["state"] == "Valid" and report["c2pa"]["generation"] == record
    assert report["c2pa"]["digital_source_type"].endswith("/trainedAlgorithmicMedia")
    [mark] = report["watermark"].values()
    assert mark["marked"] and mark["payload"] in (None, record["output_id"]), mark  # a CRC-checked id is the right one

    tampered = tmp_path / "tampered.mp4"
    data = bytearray(out.read_bytes())
    data[data.find(b"mdat") + 200] ^= 0xFF
    tampered.write_bytes(bytes(data))
    assert subprocess.run([*verify, str(tampered)], cwd=ROOT, capture_output=True).returncode == 2

    off = tmp_path / "off.mp4"
    result = subprocess.run([sys.executable, "generate.py", f"ckpt={trained}", "prompt=a red circle", f"out={off}",
                             "steps=1", "num_frames=5", "marking.enabled=false"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "marking.enabled=false" in result.stdout + result.stderr
    assert json.loads(off.with_suffix(".json").read_text())["provenance"]["marking"] == "off (marking.enabled=false)"
    assert subprocess.run([*verify, str(off)], cwd=ROOT, capture_output=True).returncode == 1


def test_generate_py_runs_a_quantized_dit_file(tmp_path):
    """ckpt= a GGUF (a file type of its own; ComfyUI's fp8 files are .safetensors single files, the path every
    single file takes), with encoders= the Wan folder, as ComfyUI users hold them."""
    from tests.helpers import write_official_folder
    from tests.quantized_files import write_gguf

    name = "wan2.1-t2v-tiny-Q8_0.gguf"
    dit = write_official_folder(tmp_path / "wan")
    write_gguf(dit.state_dict(), tmp_path / name)
    out = tmp_path / "x.mp4"
    result = subprocess.run([sys.executable, "generate.py", f"ckpt={tmp_path / name}", f"encoders={tmp_path / 'wan'}",
                             "prompt=a red circle", f"out={out}", "steps=2", "num_frames=5", "width=64", "height=48"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 0
    stored = json.loads(out.with_suffix(".json").read_text())["checkpoint"]["quantization"]
    assert stored.startswith("GGUF (F32") and name in stored
