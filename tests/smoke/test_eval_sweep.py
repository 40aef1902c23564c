"""`python -m eval.sweep -m` end to end on the CPU, offline: 2 checkpoints of a quickstart run x 2 guidance scales,
every metric (CLIP score, DINOv2 subject consistency, FVD against the run's training shards, flickering) with
random networks in their real formats; results.csv / results.json and a W&B offline run with the tables; a
re-run skips every finished cell; scores go into an adapter's registry manifest."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools.make_eval_models import write_dinov2, write_i3d
from eval.cell import run_cell
from eval.config import compose_sweep_config
from tests.helpers import publish_random_adapter
from wan_train.inference import load
from wan_train.lora import Registry

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a large red circle moves from left to right", "a small blue square moves down"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, clip_folder):
    root = tmp_path_factory.mktemp("eval_models")
    return {"clip": clip_folder, "dinov2": write_dinov2(root / "dinov2"),
            "i3d": write_i3d(root / "i3d" / "rgb_imagenet.pt")}


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("wandb_home")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DATA_DIR": str(home / "data"),
           "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_CONFIG_DIR": str(home / "config")}
    env.pop("WANDB_API_KEY", None)
    return env


def sweep_args(trained_root, models, out, prompts_file) -> list[str]:
    return ["-m", f"ckpt={trained_root / 'run'}", "step=1,2", "guidance_scale=1,3", f"prompts_file={prompts_file}",
            "steps=2", "num_frames=9", f"out={out}", f"metrics.clip={models['clip']}",
            f"metrics.image_model={models['dinov2']}", f"metrics.fvd.i3d={models['i3d']}",
            f"metrics.fvd.real_shards=[{trained_root / 'train'}]", "metrics.fvd.frames=9",
            f"metrics.fvd.cache_dir={out.parent / 'fvd_cache'}"]


@pytest.fixture(scope="module")
def swept(trained_root, models, wandb_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    prompts = out.parent / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = [sys.executable, "-m", "eval.sweep", *sweep_args(trained_root, models, out, prompts)]
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=wandb_env)
    assert first.returncode == 0, first.stderr[-4000:]
    results_after_first = (out / "results.csv").read_text()
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=wandb_env)
    assert second.returncode == 0, second.stderr[-4000:]
    return {"out": out, "first": first, "second": second, "csv": results_after_first}


def test_results_csv_has_one_row_per_cell_with_every_metric(swept):
    rows = list(csv.DictReader((swept["out"] / "results.csv").open()))
    assert [(r["step"], r["guidance_scale"]) for r in rows] == [("1", "1.0"), ("1", "3.0"), ("2", "1.0"),
                                                                ("2", "3.0")]
    for row in rows:
        assert row["steps"] == "2" and row["num_frames"] == "9" and row["videos"] == "2"
        assert -1 <= float(row["clip_score"]) <= 1
        assert 0 <= float(row["subject_consistency"]) <= 1 and 0 <= float(row["temporal_flickering"]) <= 1
        assert float(row["fvd"]) > 0 and float(row["seconds_per_video"]) > 0
    assert len({r["cell"] for r in rows}) == 4
    # the checkpoint decides the videos: the two steps differ, and so do the two guidance scales
    assert len({r["clip_score"] for r in rows}) == 4


def test_each_cell_keeps_its_videos_and_the_protocols(swept):
    results = json.loads((swept["out"] / "results.json").read_text())["results"]
    assert len(results) == 4
    for result in results:
        folder = swept["out"] / "cells" / result["id"]
        assert [v["prompt"] for v in result["videos"]] == PROMPTS and [v["seed"] for v in result["videos"]] == [0, 1]
        assert all((folder / v["video"]).is_file() and (folder / v["preview"]).is_file() for v in result["videos"])
        assert result["fvd"]["protocol"]["frames"] == 9 and result["fvd"]["n_fake"] == 2
        assert result["fvd"]["n_real"] == 4  # the 4 training clips of 17 frames hold one 9-frame window each
        assert result["models"]["clip_score"]["model_type"] == "clip"
        assert result["checkpoint"]["dit"].endswith(f"(step {result['params']['step']})")


def test_wandb_offline_run_holds_the_tables(swept):
    runs = list((swept["out"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # one per sweep invocation
    newest = max(runs)
    tables = {p.name.split("_")[0]: json.loads(p.read_text())
              for p in newest.glob("files/media/table/*.table.json")}
    assert set(tables) == {"results", "samples"}
    assert len(tables["results"]["data"]) == 4 and len(tables["samples"]["data"]) == 8
    assert {"clip_score", "fvd", "guidance_scale", "step", "sample"} <= set(tables["results"]["columns"])
    record = next(newest.glob("run-*.wandb")).read_bytes()
    assert b"video_000.mp4" in record  # the videos travel in the run's table artifact


def test_rerun_skips_finished_cells(swept):
    logs = {run: swept[run].stdout + swept[run].stderr for run in ("first", "second")}
    assert logs["first"].count("finished earlier") == 0
    assert logs["second"].count("finished earlier") == 4
    assert (swept["out"] / "results.csv").read_text() == swept["csv"]


def test_scores_are_recorded_in_the_adapter_manifest(trained, clip_folder, tmp_path):
    dit = load(trained).models.dits[None]
    publish_random_adapter(tmp_path / "adapters", "acme", "style", {"dit": dit}, seed=3, size="quickstart",
                           tmp=tmp_path)
    cfg = compose_sweep_config([f"ckpt={trained}", "lora=acme/style", f"lora_root={tmp_path / 'adapters'}",
                                "record_scores=true", "prompt=[a red circle]", "steps=1", "num_frames=5",
                                f"metrics.clip={clip_folder}", f"out={tmp_path / 'sweep'}"])
    result = run_cell(cfg)
    scores = Registry(tmp_path / "adapters").get("acme/style").manifest["scores"]
    assert scores["clip_score"] == result["metrics"]["clip_score"] and "temporal_flickering" in scores
    assert run_cell(cfg)["skipped"] is True


@pytest.mark.parametrize("overrides, message", [
    (["lora=acme/style:0.5", "record_scores=true"], "record_scores=true needs lora= one registry ref"),
    (["metrics.fvd.i3d=/nonexistent.pt", "metrics.fvd.real_shards=[x]"], "metrics.fvd.i3d=/nonexistent.pt"),
    (["metrics.fvd.i3d=/nonexistent.pt"], "metrics.fvd.real_shards is not"),
    (["step=7"], "no checkpoint of step=7; it has steps [1, 2]"),
])
def test_bad_cells_fail_before_generating(trained, tmp_path, overrides, message):
    cfg = compose_sweep_config([f"ckpt={trained}", "prompt=[x]", f"out={tmp_path}", *overrides])
    with pytest.raises((ValueError, FileNotFoundError, Exception), match=message.replace("[", r"\[")):
        run_cell(cfg)
    assert not (tmp_path / "cells").exists()


@pytest.mark.slow
def test_cells_run_as_slurm_jobs_on_the_cpu_partition(trained, tmp_path, wandb_env, slurm_cluster):
    """hydra/launcher=slurm (conf/eval/hydra/launcher/slurm.yaml, Hydra's submitit launcher) on the real test
    cluster's CPU partition: one job per cell, no GPU asked for with device=cpu; the report runs after the jobs."""
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "eval.sweep", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=cpu",
            "device=cpu", f"ckpt={trained}", "step=1,2", "prompt=[a red circle]", "steps=1", "num_frames=5",
            f"out={out}", "wandb.enabled=false"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env={**wandb_env, "SLURM_CONF": slurm_cluster.env["SLURM_CONF"]}, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert sorted(p.name for p in (out / "hydra").iterdir() if p.is_dir()) == ["0", "1", "submitit"]
    script = next((out / "hydra" / "submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --partition=cpu" in script and "gpus" not in script
