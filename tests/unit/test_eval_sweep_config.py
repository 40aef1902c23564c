"""The sweep's config (conf/eval/), its SLURM launcher preset, and the report's tables from cell results."""

import csv
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from eval.config import SWEEP_CONF_DIR, compose_sweep_config, register
from eval.report import collect, write_results


def test_sweep_config_takes_generate_keys_and_metric_presets():
    cfg = compose_sweep_config(["ckpt=runs/x", "guidance_scale=4.5", "name=demo", "metrics=random"])
    assert cfg.out == "sweeps/demo" and cfg.guidance_scale == 4.5 and cfg.preview == "gif"
    assert cfg.metrics.clip == "models/random/clip" and cfg.metrics.fvd.real_shards == ["data/demo_large_96p_val"]
    assert compose_sweep_config([]).metrics.clip is None  # default: the pixel metric only
    with pytest.raises(Exception, match="guidance"):
        compose_sweep_config(["guidance_scal=3"])


def test_slurm_launcher_preset_is_hydras_submitit_launcher():
    register()
    with initialize_config_dir(config_dir=str(SWEEP_CONF_DIR), version_base=None):
        cfg = compose("sweep", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.max_num_timeout == 3
    assert cfg.hydra.callbacks.report._target_ == "eval.report.SweepReport"


def result(cell, *, step, guidance, clip):
    return {"id": cell, "params": {"ckpt": "runs/q", "step": step, "guidance_scale": guidance, "lora": None},
            "metrics": {"clip_score": clip}, "videos": [{"video": "videos/video_000.mp4"}]}


def test_report_orders_cells_numerically_and_skips_damaged_results(tmp_path):
    for cell, step, guidance in (("a", 150, 3.0), ("b", 50, 3.0), ("c", 50, 1.0), ("d", 1000, 1.0)):
        path = tmp_path / "cells" / cell / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result(cell, step=step, guidance=guidance, clip=step / 1000)))
    (tmp_path / "cells" / "e").mkdir()
    (tmp_path / "cells" / "e" / "result.json").write_text("{cut off")
    results = collect(tmp_path)
    assert [r["id"] for r in results] == ["c", "b", "a", "d"]  # 50 < 150 < 1000 as numbers, not as text
    csv_path, json_path = write_results(tmp_path, results)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["cell"] for r in rows] == ["c", "b", "a", "d"] and rows[3]["clip_score"] == "1.0"
    assert json.loads(json_path.read_text())["cells"][0]["step"] == 50
