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
