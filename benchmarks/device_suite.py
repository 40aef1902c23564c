"""Every GPU measurement RESULTS.md waits for, in one command that fits a short loan of one H100 / H200:

    python benchmarks/device_suite.py --out results/h100          # on the GPU machine: about 9 minutes
    python benchmarks/device_suite.py --out /tmp/dry --dry-run     # the same parts at tiny sizes on the CPU (CI)

Parts, each a subprocess with its own time limit (a failure or timeout is recorded and the next part runs):
  train_step          the Wan2.1 1.3B step at 480p x 81 frames, bf16, eager: ours and diffusers' model side by side
                      (benchmarks/train_step.py: tokens/s, TFLOP/s, MFU against the measured matmul peak, peak memory),
                      with per-block activation checkpointing as such a run trains (two models' 32,760-token
                      activations would not fit 80 GB without it); MFU counts model FLOPs, not the recompute
  train_step_compile  the same with every block compiled, ours as model.compile does it, diffusers' alike
  strategies          DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 2-step bf16 runs on one GPU, each against DDP's losses,
                      consolidated and resumed (tests/gpu/test_strategies_gpu.py)
  memory_fit          the 14B-shaped LoRA step under a 24 GB cap, the planner's estimate next to the measured peak
  sampling            20 denoising steps of ours against diffusers' WanPipeline loop (1.3B, 480p x 81 frames)
  vae                 Wan2.1 VAE encode / decode at 480p x 33 frames, bf16, tiled and untiled, ours and diffusers'
  gpu_tests           pytest -m gpu: every other test that needs CUDA (the attention backends, bf16, offload, the
                      planner against a capped 14B-shaped step)
Each part writes <out>/<part>.json (its own JSON where the benchmark writes one, else the pass/fail record) and
its log <out>/<part>.log; <out>/summary.json has them all, and <out>/RESULTS_rows.md the rows to paste into
RESULTS.md, with the 42% MFU, 1.3x (ours vs diffusers) and 10% planner-error goals next to what was measured.
--only picks parts; --budget stops starting parts once that many seconds have gone (default 540: 9 minutes).
The dry run passes --dry-run's tiny presets and short limits, so CI checks the script end to end."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MFU_GOAL, RATIO_GOAL, PLANNER_GOAL = 0.42, 1.3, 0.10
DRY_LIMIT = 300  # seconds per part in a dry run


@dataclass(frozen=True)
class Part:
    name: str
    gpu: list[str]  # argv on the GPU (the output JSON path appended where `json` says so)
    dry: list[str]  # argv for --dry-run
    limit: int  # seconds on the GPU (a dry run's parts get DRY_LIMIT)
    json: bool = True  # the command takes --json PATH
    junit: bool = False  # a pytest run: outcomes from its junit XML


PARTS = (
    Part("train_step", [PY, "benchmarks/train_step.py", "--preset", "1.3b-480p", "--repeats", "6", "--checkpointing",
                        "block"],
         [PY, "benchmarks/train_step.py", "--preset", "cpu-small", "--repeats", "1", "--warmup", "1"], limit=70),
    Part("train_step_compile", [PY, "benchmarks/train_step.py", "--preset", "1.3b-480p", "--repeats", "6",
                                "--checkpointing", "block", "--compile"],
         [PY, "benchmarks/train_step.py", "--preset", "cpu-small", "--repeats", "1", "--warmup", "1", "--compile",
          "--compile-backend", "aot_eager"], limit=115),
    Part("strategies", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu/test_strategies_gpu.py"],
         [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu/test_strategies_gpu.py"], limit=100,
         json=False, junit=True),
    Part("memory_fit", [PY, "benchmarks/memory_fit.py", "--preset", "14b-480p-24gb", "--steps", "2"],
         [PY, "benchmarks/memory_fit.py", "--preset", "cpu-smoke", "--steps", "1", "--warmup", "0"], limit=70),
    Part("sampling", [PY, "benchmarks/sampling.py", "--preset", "1.3b-480p", "--steps", "20", "--repeats", "1"],
         [PY, "benchmarks/sampling.py", "--preset", "cpu-small", "--steps", "2", "--repeats", "1"], limit=60),
    Part("vae", [PY, "benchmarks/vae_codec.py", "--device", "cuda", "--dtype", "bf16", "--frames", "33",
                 "--height", "480", "--width", "832", "--reference"],
         [PY, "benchmarks/vae_codec.py", "--frames", "5", "--height", "64", "--width", "64", "--modes", "untiled",
          "--ops", "encode"],
         limit=60),
    Part("gpu_tests", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/gpu", "--ignore",
                       "tests/gpu/test_strategies_gpu.py"],
         [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/gpu", "--ignore",
          "tests/gpu/test_strategies_gpu.py"], limit=60, json=False, junit=True),
)


def run_part(part: Part, out: Path, *, dry: bool, limit: int) -> dict:
    """Run one part; its record: status (ok | failed | timeout), seconds, and its results."""
    argv = list(part.dry if dry else part.gpu)
    result_path, junit_path = out / f"{part.name}.result.json", out / f"{part.name}.junit.xml"
    if part.json:
        argv += ["--json", str(result_path)]
    if part.junit:
        argv += [f"--junitxml={junit_path}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.monotonic()
    with open(out / f"{part.name}.log", "w") as log:
        log.write("+ " + " ".join(argv) + "\n")
        log.flush()
        try:  # its own session: a timeout kills the part and every process it started
            process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
            code = process.wait(timeout=limit)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            code, status = None, "timeout"
    record = {"part": part.name, "status": status, "returncode": code, "seconds": round(time.monotonic() - start, 1),
              "limit_s": limit, "command": " ".join(argv[1:])}
    if part.json and result_path.is_file():
        record["result"] = json.loads(result_path.read_text())
    if part.junit and junit_path.is_file():
        record["tests"] = junit_outcomes(junit_path)
    if status != "ok":
        record["log_tail"] = (out / f"{part.name}.log").read_text()[-2000:]
    (out / f"{part.name}.json").write_text(json.dumps(record, indent=2))
    return record


def junit_outcomes(path: Path) -> list[dict]:
    out = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        out.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                    "seconds": float(case.get("time") or 0)})
    return out


def rows(records: list[dict], *, device: str) -> str:
    """RESULTS.md rows: one per measurement, with the goals beside it."""
    lines = [f"Device suite, {date.today().isoformat()}, {device} (benchmarks/device_suite.py)", "",
             "| part | measured | goal | status |", "|---|---|---|---|"]
    for r in records:
        result, what, goal = r.get("result") or {}, "", ""
        if r["part"].startswith("train_step") and result:
            ours, ref = result["models"]["wan_train"], result["models"]["diffusers"]
            what = (f"ours {ours['s_per_step']:.3g} s/step, {ours['tokens_per_s']:.4g} tokens/s, "
                    f"{ours['tflops']:.3g} TFLOP/s, MFU {100 * ours['mfu']:.1f}%, peak {ours['peak_GiB']:.3g} GiB; "
                    f"diffusers {ref['s_per_step']:.3g} s/step, MFU {100 * ref['mfu']:.1f}%; throughput "
                    f"{ref['s_per_step'] / ours['s_per_step']:.2f}x diffusers")
            goal = f"MFU >= {100 * MFU_GOAL:.0f}%, >= {RATIO_GOAL}x diffusers"
        elif r["part"] == "memory_fit" and result:
            capped = result["runs"]["capped"]
            error = capped["estimated_peak_bytes"] / capped["peak_bytes"] - 1
            what = (f"measured peak {capped['peak_bytes'] / 2**30:.3g} GiB, planner "
                    f"{capped['estimated_peak_bytes'] / 2**30:.3g} GiB ({100 * error:+.1f}%), {capped['setting']}")
            goal = f"planner within {100 * PLANNER_GOAL:.0f}%"
        elif r["part"] == "sampling" and result:
            ours, ref = result["median_s"]["wan_train"], result["median_s"]["diffusers"]
            what = (f"{result['steps']} steps: ours {ours:.3g} s, diffusers {ref:.3g} s, time ratio "
                    f"{result['time_ratio_ours_over_diffusers']:.3f}; latents agree to "
                    f"{result['max_abs_diff_latents']:.2g}")
        elif r["part"] == "vae" and result:
            what = "; ".join(f"{row['op']} {row['tiling']} {row['impl']} {row['frames_per_s']:.3g} frames/s, "
                             f"{row['peak_bytes'] / 2**30:.3g} GiB" for row in result["rows"])
        elif r.get("tests"):
            counts = {}
            for t in r["tests"]:
                counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
            what = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        elif result:
            what = json.dumps(result)[:200]
        lines.append(f"| {r['part']} | {what or '-'} | {goal or '-'} | {r['status']} ({r['seconds']:.0f} s) |")
    return "\n".join(lines) + "\n"


def device_name(dry: bool) -> str:
    if not dry:
        try:
            return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "GPU (nvidia-smi unavailable)"
    return f"CPU ({platform.machine()}), dry run"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for each part's JSON and log, and the rows")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script end to end")
    p.add_argument("--only", help="comma-separated parts (default: all): " + ",".join(x.name for x in PARTS))
    p.add_argument("--budget", type=float, default=540.0, help="seconds after which no further part starts")
    args = p.parse_args(argv)
    chosen = [x for x in PARTS if args.only is None or x.name in args.only.split(",")]
    unknown = set(args.only.split(",")) - {x.name for x in PARTS} if args.only else set()
    if unknown:
        p.error(f"--only: unknown parts {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    start, records = time.monotonic(), []
    for part in chosen:
        left = args.budget - (time.monotonic() - start)
        if left <= 10:
            records.append({"part": part.name, "status": "not run (budget spent)", "seconds": 0.0})
            continue
        limit = min(DRY_LIMIT if args.dry_run else part.limit, int(left))
        print(f"[{time.monotonic() - start:5.0f} s] {part.name} (limit {limit} s)", flush=True)
        record = run_part(part, args.out, dry=args.dry_run, limit=limit)
        print(f"[{time.monotonic() - start:5.0f} s] {part.name}: {record['status']} in {record['seconds']} s",
              flush=True)
        records.append(record)
    device = device_name(args.dry_run)
    (args.out / "summary.json").write_text(json.dumps({"device": device, "dry_run": args.dry_run,
                                                       "seconds": round(time.monotonic() - start, 1),
                                                       "parts": records}, indent=2))
    table = rows(records, device=device)
    (args.out / "RESULTS_rows.md").write_text(table)
    print(table)
    return records


if __name__ == "__main__":
    main()
