"""strategy=fsdp for real on the CPU: torch FSDP2 over gloo, 2 tasks of a job on the tests' real SLURM cluster
(tests/slurm_cluster.py), each holding half of every DiT weight. It trains like one process with the doubled
batch and like DDP on the same 2 tasks (activation checkpointing and EMA on, LoRA too); its shard folders resume
exactly at the same world size, and consolidate into one file that holds DDP's weights, optimizer state and EMA
and resumes like DDP's checkpoint on one process.

Weights are compared with DDP's: against one process, a different summation order of the same gradients moves
a few weights by ~1e-5 through Adam's normalisation, for DDP as much as for FSDP (the losses agree to 2e-5)."""

import glob
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.load import _load_distributed_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import randomize_
from tests.smoke.slurm_run import ROOT, make_shards, metrics, one_task, sbatch, tail
from wan_train.lora import Registry
from wan_train.lora.cli import main as lora_cli
from wan_train.models import WanDiT, get_size, load_dit, save_dit
from wan_train.training.consolidate import checkpoint_kind, consolidate, export

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

COMMON = {"model.activation_checkpointing": "true", "trainer.ema_decay": "0.5"}
VIDEOS = {"validation.every_n_steps": "4", "validation.steps": "2", "validation.num_frames": "5",
          "validation.prompts": "[a red circle]"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = make_shards(tmp_path_factory.mktemp("fsdp_data"))
    torch.manual_seed(0)
    save_dit(randomize_(WanDiT(get_size("quickstart").dit), seed=3), root / "base")
    return root


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    """run name -> folder: one process x batch 4, and DDP and FSDP over 2 tasks x batch 2 (FSDP with validation
    videos)."""
    root = tmp_path_factory.mktemp("fsdp_runs")
    done = one_task(shards, root / "one", **{"data.batch_size": "4"}, **COMMON)
    assert done.returncode == 0, tail(done)
    done = sbatch(root, shards, root / "ddp", **{"data.batch_size": "2", "strategy": "ddp"}, **COMMON)
    assert done.returncode == 0, tail(done)
    done = sbatch(root, shards, root / "fsdp", **{"data.batch_size": "2", "strategy": "fsdp"}, **COMMON, **VIDEOS)
    assert done.returncode == 0, tail(done)
    return root


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(glob.glob(str(folder / "*.safetensors"))):
        out.update(load_file(path))
    return out


def assert_same_losses(expected: Path, actual: Path, rel: float) -> None:
    want, got = metrics(expected), metrics(actual)
    for key in ("train/loss", "val/loss"):
        assert got[key], key
        for step, value in got[key].items():
            assert value == pytest.approx(want[key][step], rel=rel), (key, step)


def test_two_fsdp_tasks_train_like_one_process_with_the_doubled_batch(runs):
    ddp, fsdp = runs / "ddp", runs / "fsdp"
    assert sorted(metrics(fsdp)["train/loss"]) == [0, 1, 2, 3]
    assert_same_losses(runs / "one", fsdp, rel=2e-5)
    assert_same_losses(ddp, fsdp, rel=1e-6)
    shards = fsdp / "checkpoints" / "step=0000002.ckpt"
    assert checkpoint_kind(shards) == "fsdp"
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    for folder in ("dit", "dit_ema"):  # gathered from both tasks' shards
        want, got = weights(ddp / folder), weights(fsdp / folder)
        assert got.keys() == want.keys()
        assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want), folder
    # validation videos: both tasks ran the sharded DiT's forward passes, rank 0 wrote them
    assert (fsdp / "samples" / "step_0000004" / "prompt_00.mp4").is_file()


@pytest.mark.parametrize("overrides", [{"strategy.sharding_strategy": "HYBRID_SHARD"},
                                       {"strategy.sharding_strategy": "SHARD_GRAD_OP",
                                        "strategy.state_dict_type": "full"}], ids=["hybrid", "grad_op_full"])
def test_other_sharding_strategies_train_the_same(runs, shards, tmp_path, overrides):
    """HYBRID_SHARD (here 1 node: a 1 x 2 replicate x shard mesh) and SHARD_GRAD_OP with one gathered checkpoint
    file: the same first 2 steps."""
    done = sbatch(tmp_path, shards, tmp_path / "run", **{"data.batch_size": "2", "strategy": "fsdp",
                                                         "trainer.max_steps": "2"}, **COMMON, **overrides)
    assert done.returncode == 0, tail(done)
    assert_same_losses(runs / "one", tmp_path / "run", rel=2e-5)
    checkpoint = tmp_path / "run" / "checkpoints" / "step=0000002.ckpt"
    assert checkpoint.is_file() == (overrides.get("strategy.state_dict_type") == "full")


def test_shard_folders_resume_exactly_on_the_same_world_size(runs, shards, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(runs / "fsdp" / "checkpoints" / "step=0000002.ckpt",
                    resumed / "checkpoints" / "step=0000002.ckpt")
    done = sbatch(tmp_path, shards, resumed, **{"data.batch_size": "2", "strategy": "fsdp"}, **COMMON)
    assert done.returncode == 0, tail(done)
    assert sorted(metrics(resumed)["train/loss"]) == [2, 3]
    assert_same_losses(runs / "fsdp", resumed, rel=0)
    want, got = weights(runs / "fsdp" / "dit_ema"), weights(resumed / "dit_ema")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_consolidated_shards_resume_on_one_process(runs, shards, tmp_path):
    """consolidate -> one file with the weights, optimizer state (numbered as torch numbers it) and EMA of DDP's
    step-2 checkpoint. Resumed by one process, it trains like DDP's checkpoint resumed there (in both, the data
    stream restarts: 2 tasks' positions do not map onto 1)."""
    single = consolidate(runs / "fsdp", 2)
    ddp_file = runs / "ddp" / "checkpoints" / "step=0000002.ckpt"
    own = torch.load(ddp_file, map_location="cpu", weights_only=True)
    full = torch.load(single, map_location="cpu", weights_only=True)
    assert full["global_step"] == own["global_step"] == 2
    assert full["state_dict"].keys() == own["state_dict"].keys()
    assert all(torch.allclose(full["state_dict"][k], v, atol=1e-6) for k, v in own["state_dict"].items())
    mine, theirs = full["optimizer_states"][0], own["optimizer_states"][0]
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    for index, state in theirs["state"].items():
        assert all(torch.allclose(mine["state"][index][k], v, atol=1e-6) for k, v in state.items()), index
    ema = full["callbacks"]["EMA"]["shadow"]
    assert all(torch.allclose(ema[k], v, atol=1e-6) for k, v in own["callbacks"]["EMA"]["shadow"].items())

    for name, path in (("from_shards", single), ("from_ddp", ddp_file)):
        done = one_task(shards, tmp_path / name, **{"data.batch_size": "4", "resume": f"'{path}'"}, **COMMON)
        assert done.returncode == 0, tail(done)
        assert "the stream restarts from its beginning" in (tmp_path / name / "train.log").read_text()
    assert_same_losses(tmp_path / "from_ddp", tmp_path / "from_shards", rel=1e-5)


def test_export_writes_the_official_layout_from_shards(runs):
    """consolidate --export [--ema]: step 4's shards -> dit/ (dit_ema/) in the official layout, bit for bit the
    folders the run itself exported at its end."""
    for extra, folder in (([], "dit"), (["--ema"], "dit_ema")):
        done = subprocess.run([sys.executable, "-m", "wan_train.training.consolidate", str(runs / "fsdp"), "--step",
                               "4", "--export", *extra], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        out = runs / "fsdp" / "consolidated" / "step=0000004" / folder
        assert done.stdout.strip() == str(out)
        want, got = weights(runs / "fsdp" / folder), weights(out)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert load_dit(runs / "fsdp" / "consolidated" / "step=0000004" / "dit").config.in_dim == 12


def test_lora_under_fsdp_keeps_the_adapter_only_and_resumes_exactly(shards, tmp_path):
    lora = {"lora": "default", "model.checkpoint": str(shards / "base"), "lora.rank": "4", "lora.alpha": "4",
            "optim.lr": "1e-3", **COMMON}
    done = sbatch(tmp_path, shards, tmp_path / "ddp", **{"data.batch_size": "2", "strategy": "ddp"}, **lora)
    assert done.returncode == 0, tail(done)
    done = sbatch(tmp_path, shards, tmp_path / "fsdp", **{"data.batch_size": "2", "strategy": "fsdp"}, **lora)
    assert done.returncode == 0, tail(done)
    assert_same_losses(tmp_path / "ddp", tmp_path / "fsdp", rel=1e-6)
    saved = _load_distributed_checkpoint(tmp_path / "fsdp" / "checkpoints" / "step=0000002.ckpt")["state_dict"]
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)  # never the frozen base
    for folder in ("adapter", "adapter_ema"):
        want, got = weights(tmp_path / "ddp" / folder), weights(tmp_path / "fsdp" / folder)
        assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    # the adapter of step 2, from its shards: a peft folder stamped with the base's identity, which the registry
    # takes as a version (python -m wan_train.lora import)
    (adapter,) = export(tmp_path / "fsdp", 2)
    assert adapter == tmp_path / "fsdp" / "consolidated" / "step=0000002" / "adapter"
    stamped = safe_open(adapter / "adapter_model.safetensors", "pt").metadata()
    assert stamped == safe_open(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors", "pt").metadata()
    assert lora_cli([f"--root={tmp_path / 'registry'}", "import", str(adapter / "adapter_model.safetensors"),
                     "--client", "acme", "--name", "step2", "--size", "quickstart",
                     "--base", str(shards / "base")]) == 0
    version = Registry(tmp_path / "registry").get("acme/step2/v0001")
    assert version.manifest["base"]["identity"]["dit"] == stamped["wan_train.base_hash"]

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp" / "checkpoints" / "step=0000002.ckpt",
                    resumed / "checkpoints" / "step=0000002.ckpt")
    done = sbatch(tmp_path, shards, resumed, **{"data.batch_size": "2", "strategy": "fsdp"}, **lora)
    assert done.returncode == 0, tail(done)
    assert_same_losses(tmp_path / "fsdp", resumed, rel=0)
    want, got = weights(tmp_path / "fsdp" / "adapter"), weights(resumed / "adapter")
    assert all(torch.equal(got[k], want[k]) for k in want)

    # the consolidated file (adapter only) resumes under FSDP too: Lightning gathers nothing, the base stays frozen
    single = consolidate(tmp_path / "fsdp", 2)
    done = sbatch(tmp_path, shards, tmp_path / "from_file", **{"data.batch_size": "2", "strategy": "fsdp",
                                                               "resume": f"'{single}'"}, **lora)
    assert done.returncode == 0, tail(done)
    assert_same_losses(tmp_path / "fsdp", tmp_path / "from_file", rel=1e-6)

    other = tmp_path / "other_rank"  # an adapter of another shape is refused by name, before anything loads
    shutil.copytree(resumed / "checkpoints" / "step=0000002.ckpt", other / "checkpoints" / "step=0000002.ckpt")
    done = sbatch(tmp_path, shards, other, **{"data.batch_size": "2", "strategy": "fsdp"}, **{**lora, "lora.rank": "8"})
    assert done.returncode != 0
    assert "the checkpoint's trained weights do not match this run's" in done.stdout  # the job's output
