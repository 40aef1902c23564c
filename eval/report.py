"""A sweep's report: every finished cell under `<out>/cells/` as one row of `<out>/results.csv` and
`<out>/results.json`, and a W&B run (offline files in `<out>/wandb/` without WANDB_API_KEY) holding the config,
a `results` table (one row per cell, with its first video) and a `samples` table (one row per video).

`SweepReport` is the Hydra callback that writes it after a single run or after a whole multirun (on SLURM, in
the submitting process once every cell is done); `python -m eval.report OUT` writes it for any sweep folder.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from eval.cell import AUDIO_PARAMS, RESULT, write_json, write_text

log = logging.getLogger(__name__)

PARAMS = ("ckpt", "step", "ema", "lora", "solver", "steps", "shift", "guidance_scale", "guidance_scale_2", "width",
          "height", "num_frames", "seed")


def collect(out: str | Path) -> list[dict]:
    """The finished cells' results, in the order of their coordinates."""
    results = []
    for path in sorted(Path(out).glob(f"cells/*/{RESULT}")):
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            log.warning("%s is damaged; left out of the report (re-run the sweep to redo that cell)", path)
    return sorted(results, key=lambda r: [_order(r["params"].get(k)) for k in PARAMS + AUDIO_PARAMS])


def coordinates(results: list[dict]) -> tuple[str, ...]:
    """The coordinates shown: PARAMS, and the sound's when any cell made sound."""
    return PARAMS + tuple(k for k in AUDIO_PARAMS if any(k in r["params"] for r in results))


def _order(value) -> tuple:
    """Numbers by value, then everything else by text; None first."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def rows(results: list[dict]) -> list[dict]:
    """One flat row per cell: id, coordinates, metrics (columns in a stable order)."""
    metrics = sorted({m for r in results for m in r["metrics"]})
    return [{"cell": r["id"], **{k: r["params"].get(k) for k in coordinates(results)}, "videos": len(r["videos"]),
             **{m: r["metrics"].get(m) for m in metrics}} for r in results]


def write_results(out: str | Path, results: list[dict]) -> tuple[Path, Path]:
    out = Path(out)
    table = rows(results)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(table[0]) if table else ["cell", *PARAMS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    csv_path, json_path = out / "results.csv", out / "results.json"
    write_text(csv_path, text.getvalue())
    write_json(json_path, {"cells": table, "results": results})
    return csv_path, json_path


def log_wandb(out: str | Path, results: list[dict], *, config: dict, name: str, project: str,
              entity: str | None = None) -> Path:
    """The W&B run of the sweep; returns its local folder."""
    import wandb

    out = Path(out)
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run = wandb.init(project=project, entity=entity, name=name, group=name, job_type="eval", config=config,
                     dir=str(out), mode=mode)
    try:
        table = rows(results)
        columns = list(table[0]) + ["sample"]
        cells = wandb.Table(columns=columns)
        for row, result in zip(table, results, strict=True):
            first = Path(out / "cells" / result["id"] / result["videos"][0]["video"])
            cells.add_data(*[_cell_value(row[c]) for c in columns[:-1]], wandb.Video(str(first), format="mp4"))
        metrics = sorted({m for r in results for m in r["metrics"]} - {"fvd"})
        params = coordinates(results)
        samples = wandb.Table(columns=["cell", *params, "prompt", "video_seed", "video", *metrics])
        for result in results:
            for video in result["videos"]:
                path = out / "cells" / result["id"] / video["video"]
                samples.add_data(result["id"], *[_cell_value(result["params"].get(k)) for k in params],
                                 video["prompt"], video["seed"], wandb.Video(str(path), format="mp4"),
                                 *[video.get(m) for m in metrics])
        run.log({"results": cells, "samples": samples})
        folder = Path(run.dir).parent
    finally:
        run.finish()
    return folder


def _cell_value(value):
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)


def report(out: str | Path, *, config: dict | None = None, wandb_cfg=None, name: str = "sweep") -> list[dict]:
    """Write results.csv / results.json (and the W&B run when wandb_cfg.enabled) for the sweep folder `out`."""
    results = collect(out)
    if not results:
        log.warning("%s: no finished cells; nothing to report", out)
        return results
    csv_path, _ = write_results(out, results)
    log.info("%d cells: %s", len(results), csv_path)
    if wandb_cfg is not None and wandb_cfg.enabled:
        folder = log_wandb(out, results, config=config or {}, name=name, project=wandb_cfg.project,
                           entity=wandb_cfg.entity)
        log.info("W&B run in %s", folder)
    return results


class SweepReport(Callback):
    """Hydra callback (conf/eval/sweep.yaml, hydra.callbacks.report)."""

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._report(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._report(config)

    @staticmethod
    def _report(config: DictConfig) -> None:
        task = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
        overrides = list(config.hydra.overrides.task) if "hydra" in config else []
        report(config.out, config={**OmegaConf.to_container(OmegaConf.create(task), resolve=True),
                                   "overrides": overrides}, wandb_cfg=config.wandb, name=config.name)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m eval.report SWEEP_FOLDER  (writes results.csv / results.json)")
    report(sys.argv[1])
