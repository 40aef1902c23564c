"""Eval sweeps: checkpoints x adapters x sampler settings, scored and tabled.

    python -m eval.sweep -m ckpt=runs/quickstart step=50,150 guidance_scale=1,3 \\
        prompts_file=conf/eval/prompts/quickstart.txt [metrics.clip=FOLDER] [metrics.fvd.i3d=FILE ...]

Each job of the Hydra multirun is one cell (eval.cell): generate.py's keys decide the videos, `metrics.*` the
numbers. Results land in `out` (default sweeps/NAME): cells/<id>/ (videos, previews, result.json), then
results.csv, results.json and a W&B run with the tables (eval.report). Finished cells are skipped on re-runs.
SLURM: add `hydra/launcher=slurm hydra.launcher.partition=NAME` (one job per cell, through submitit).
"""

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from eval.cell import run_cell
from eval.config import SWEEP_CONF_DIR, register

log = logging.getLogger(__name__)


@hydra.main(config_path=str(SWEEP_CONF_DIR), config_name="sweep", version_base=None)
def main(cfg: DictConfig) -> dict:
    result = run_cell(cfg)  # logs a skipped cell itself
    if not result.get("skipped"):
        log.info("cell %s done in %.0f s: %s", result["id"], result["seconds"], Path(cfg.out) / "cells" / result["id"])
    return result["metrics"]


if __name__ == "__main__":
    register()
    sys.exit(main())
