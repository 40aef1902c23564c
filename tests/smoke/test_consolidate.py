"""Sharded checkpoints -> one file: a folder in the layout strategy=fsdp writes (torch.distributed.checkpoint shards
of {"state_dict": ...} + meta.pt with the rest) is consolidated into RUN_DIR/consolidated/, which generate.py then
reads. (Folders written by real 2-task FSDP runs, optimizer state included: tests/smoke/test_fsdp.py.)"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from wan_train.inference.loading import load
from wan_train.training.consolidate import checkpoint_kind, consolidate

ROOT = Path(__file__).resolve().parents[2]


def fsdp_sharded_copy(checkpoint: dict, folder: Path) -> None:
    """What the FSDP strategy's save_checkpoint writes for state_dict_type="sharded" (weights only here)."""
    rest = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
    dcp.save({"state_dict": checkpoint["state_dict"]}, checkpoint_id=str(folder), no_dist=True)
    torch.save(rest, folder / "meta.pt")


@pytest.fixture()
def sharded_run(trained, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained / "config.yaml", run / "config.yaml")
    (run / "checkpoints").mkdir()
    original = torch.load(trained / "checkpoints" / "step=0000002.ckpt", map_location="cpu", weights_only=True)
    fsdp_sharded_copy(original, run / "checkpoints" / "step=0000002.ckpt")
    return run, original


def test_a_sharded_folder_consolidates_into_one_file_that_generate_reads(sharded_run):
    run, original = sharded_run
    assert checkpoint_kind(run / "checkpoints" / "step=0000002.ckpt") == "fsdp"
    with pytest.raises(Exception, match=r"sharded checkpoint .*wan_train.training.consolidate"):
        load(run)
    out = consolidate(run)
    assert out == run / "consolidated" / "step=0000002.ckpt"
    full = torch.load(out, map_location="cpu", weights_only=True)
    assert full["global_step"] == original["global_step"] == 2
    assert full["state_dict"].keys() == original["state_dict"].keys()
    assert all(torch.equal(full["state_dict"][k], v) for k, v in original["state_dict"].items())
    dit = load(run).models.dits[None]
    assert torch.equal(dit.blocks[0].ffn[0].weight, original["state_dict"]["dit.blocks.0.ffn.0.weight"])


def test_the_command_line(sharded_run):
    run, _ = sharded_run
    done = subprocess.run([sys.executable, "-m", "wan_train.training.consolidate", str(run), "--step", "2"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(run / "consolidated" / "step=0000002.ckpt")
