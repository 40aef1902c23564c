"""FSDP and DeepSpeed on one GPU (skipped without CUDA): a 2-step quickstart run per sharded engine writes its
shard folder, consolidates into one file, and generate.py loads it; the losses track a DDP run's (bf16)."""

import csv
from pathlib import Path

import pytest
import torch

from data_tools.make_demo import make_demo
from wan_train.config import compose_config
from wan_train.inference import load
from wan_train.training.consolidate import checkpoint_kind, consolidate
from wan_train.training.run import run

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_data")
    make_demo(root / "train", num_clips=8, seed=0, width=256, height=144, frames=17, fps=16.0, shard_size=8)
    return root


def config(shards, run_dir, strategy):
    return compose_config([
        "recipe=quickstart", "trainer=gpu", "trainer.devices=1", f"strategy={strategy}", f"run_dir={run_dir}",
        f"data.shards=[{shards / 'train'}]", "data.durations=[0.5]", "data.num_workers=0", "trainer.max_steps=2",
        "trainer.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=2",
        "trainer.enable_progress_bar=false", "flow.held_out_samples=1", "validation.every_n_steps=null",
        "logger.wandb=false", "model.activation_checkpointing=true"])


def losses(run_dir: Path) -> list[float]:
    rows = csv.DictReader(next(run_dir.glob("csv/version_*/metrics.csv")).open())
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_sharded_engine_runs_consolidates_and_loads(shards, tmp_path, strategy):
    reference = tmp_path / "ddp"
    run(config(shards, reference, "ddp"))
    run_dir = tmp_path / strategy
    metrics = run(config(shards, run_dir, strategy))
    assert metrics["step"] == 2
    saved = run_dir / "checkpoints" / "step=0000002.ckpt"
    assert checkpoint_kind(saved) in ("fsdp", "deepspeed") or saved.is_file()
    single = consolidate(run_dir, 2)
    state = torch.load(single, map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("dit.blocks.0.") for k in state)
    dit = load(run_dir, step=2).models.dits[None]
    assert dit.config.in_dim == 12
    assert losses(run_dir) == pytest.approx(losses(reference), rel=5e-2)  # bf16 on both; the same samples
