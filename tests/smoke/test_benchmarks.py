"""benchmarks/train_step.py runs on the CPU with its small preset and prints the RESULTS.md table: s/step,
tokens/s, TFLOP/s, MFU against the matmul peak it measured, peak memory, for wan_train and diffusers."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_step_benchmark_prints_the_table_and_json(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "benchmarks/train_step.py", "--preset", "cpu-small", "--repeats", "2",
                           "--warmup", "1", "--checkpointing", "block", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| model | s/step | tokens/s | TFLOP/s | MFU | peak GiB |" in done.stdout
    assert "| wan_train |" in done.stdout and "| diffusers |" in done.stdout
    result = json.loads(out.read_text())
    assert result["tokens"] == 3 * 4 * 4 and "checkpointing block" in result["settings"]
    for model in result["models"].values():
        assert model["s_per_step"] > 0 and 0 < model["mfu"] < 1.5
        assert abs(model["tokens_per_s"] * model["s_per_step"] - 48) < 1e-6
    assert result["matmul_peak_TFLOPs"] > 0 and result["time_ratio_ours_over_diffusers"] > 0


def test_memory_fit_benchmark_reports_the_planner_next_to_the_measured_peak(tmp_path):
    out = tmp_path / "fit.json"
    done = subprocess.run([sys.executable, "benchmarks/memory_fit.py", "--preset", "cpu-check", "--steps", "1",
                           "--warmup", "0", "--json", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| run | setting | s/step | peak GiB (measured) | peak GiB (planner) | planner / measured |" in done.stdout
    result = json.loads(out.read_text())
    capped, uncapped = result["runs"]["capped"], result["runs"]["uncapped"]
    assert capped["setting"] == "bf16, ckpt" and uncapped["setting"] == "bf16, no ckpt"
    assert capped["peak_bytes"] < uncapped["peak_bytes"]  # checkpointing is what the cap asked for
    for r in (capped, uncapped):  # the arithmetic against the CPU's own allocations (it errs on the safe side)
        assert 1.0 <= r["estimated_peak_bytes"] / r["peak_bytes"] <= 1.3


def test_train_step_benchmark_times_compiled_blocks_against_eager(tmp_path):
    out = tmp_path / "compile.json"
    done = subprocess.run([sys.executable, "benchmarks/train_step.py", "--preset", "cpu-small", "--repeats", "2",
                           "--warmup", "1", "--against", "eager", "--compile-backend", "aot_eager", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| compiled |" in done.stdout and "| eager |" in done.stdout and "time ratio compiled / eager" in done.stdout
    result = json.loads(out.read_text())
    assert result["against"] == "eager" and "compile" in result["settings"]
    assert result["time_ratio_compiled_over_eager"] > 0


def test_the_device_suite_dry_run_checks_every_part_end_to_end(tmp_path):
    """benchmarks/device_suite.py --dry-run: every part at tiny sizes on the CPU, each writing its record; the GPU
    tests are skipped here (no CUDA), which the record shows; the rows name the goals."""
    done = subprocess.run([sys.executable, "benchmarks/device_suite.py", "--out", str(tmp_path), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = {r["part"]: r for r in summary["parts"]}
    assert list(parts) == ["train_step", "train_step_compile", "strategies", "memory_fit", "sampling", "vae",
                           "gpu_tests"]
    for name, record in parts.items():
        assert record["status"] == "ok", (name, record.get("log_tail"))
        assert (tmp_path / f"{name}.log").is_file() and (tmp_path / f"{name}.json").is_file()
    assert parts["train_step"]["result"]["models"]["diffusers"]["s_per_step"] > 0
    assert "compile" in parts["train_step_compile"]["result"]["settings"]
    assert parts["memory_fit"]["result"]["runs"]["capped"]["peak_bytes"] > 0
    assert parts["vae"]["result"]["rows"][0]["op"] == "encode"
    assert {t["outcome"] for t in parts["gpu_tests"]["tests"] + parts["strategies"]["tests"]} == {"skipped"}  # no CUDA
    rows = (tmp_path / "RESULTS_rows.md").read_text()
    assert "| train_step | ours " in rows and "MFU >= 42%, >= 1.3x diffusers" in rows
    assert "planner within 10%" in rows


def test_a_part_past_its_limit_is_stopped_and_the_rest_still_run(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import device_suite

    slow = device_suite.Part("slow", [], [sys.executable, "-c", "import time; time.sleep(60)"], limit=1, json=False)
    fails = device_suite.Part("fails", [], [sys.executable, "-c", "raise SystemExit(3)"], limit=5, json=False)
    records = [device_suite.run_part(p, tmp_path, dry=True, limit=2) for p in (slow, fails)]
    assert [r["status"] for r in records] == ["timeout", "failed"] and records[0]["seconds"] < 10
    assert records[1]["returncode"] == 3
