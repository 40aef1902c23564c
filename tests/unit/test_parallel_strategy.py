"""strategy= presets -> Lightning strategies; the generated DeepSpeed configs pass DeepSpeed's own parser; the
launcher's world (SLURM or torchrun variables) must match trainer.devices x trainer.num_nodes, and simulated
SLURM variables give Lightning the right ranks."""

import re

import lightning as L
import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy

from wan_train.config import ConfigError, compose_config, validate
from wan_train.parallel.deepspeed import DeepSpeedStrategy
from wan_train.parallel.fsdp import FSDPStrategy
from wan_train.parallel.launch import check_launch, detect_launch, tasks_per_node
from wan_train.parallel.strategy import build_strategy, check_deepspeed_config, deepspeed_config

PRESETS = ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero2_offload", "deepspeed_zero3", "deepspeed_zero3_offload"]


def config(*overrides):
    return compose_config(["recipe=quickstart", *overrides])


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates_and_builds_its_lightning_strategy(preset):
    cfg = config(f"strategy={preset}", "trainer=gpu", "model.activation_checkpointing=true")
    validate(cfg)
    strategy = build_strategy(cfg)
    expected = {"ddp": DDPStrategy, "fsdp": FSDPStrategy}.get(preset, DeepSpeedStrategy)  # both: ours, which resume
    assert type(strategy) is expected  # weights-only
    if preset == "fsdp":  # FSDP2 over one data-parallel mesh dimension, sharded checkpoints
        assert strategy.sharding_strategy == "FULL_SHARD" and strategy._save_distributed_checkpoint
    if preset.startswith("deepspeed"):
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == int(preset[len("deepspeed_zero")])
        assert ("offload_optimizer" in zero) == preset.endswith("_offload")
        assert ("offload_param" in zero) == (preset == "deepspeed_zero3_offload")
        assert strategy.config["bf16"]["enabled"] and strategy.config["train_micro_batch_size_per_gpu"] == 2


def test_deepspeed_configs_go_through_deepspeeds_parser():
    cfg = config("strategy=deepspeed_zero3_offload", "trainer=gpu", "trainer.accumulate_grad_batches=4",
                 "optim.gradient_clip_val=1.0")
    generated = deepspeed_config(cfg.strategy, micro_batch=2, accumulate=4, precision="bf16-mixed",
                                 gradient_clip=1.0)
    check_deepspeed_config(generated)
    assert generated["gradient_accumulation_steps"] == 4 and generated["gradient_clipping"] == 1.0
    generated["zero_optimization"]["offload_parm"] = generated["zero_optimization"].pop("offload_param")
    with pytest.raises(Exception, match="offload_parm"):
        check_deepspeed_config(generated)


@pytest.mark.parametrize("overrides, message", [
    (["strategy=deepspeed_zero2"], "strategy.name='deepspeed' needs GPUs (trainer=gpu); on the CPU use strategy=ddp"),
    (["strategy=fsdp", "strategy.sharding_strategy=NO_SHARD"], "'NO_SHARD' shards nothing: that is strategy=ddp"),
    (["strategy=deepspeed_zero2", "trainer=gpu", "strategy.stage=1"], "strategy.stage=1: expected one of [2, 3]"),
    (["strategy=deepspeed_zero2", "trainer=gpu", "strategy.offload_parameters=true"],
     "strategy.offload_parameters=true needs ZeRO stage 3"),
    (["strategy=fsdp", "strategy.sharding_strategy=FULL"], "strategy.sharding_strategy='FULL'"),
    (["strategy=fsdp", "strategy.offload_parameters=true"], "on the CPU they are there already"),
    (["strategy=fsdp", "model.size=tiny-moe", "expert=both"], "with strategy=fsdp train each expert as its own job"),
    (["strategy.name=horovod"], "strategy.name='horovod': expected one of"),
    (["cluster=slurm", "cluster.requeue_signal=SIGNOPE"], "cluster.requeue_signal='SIGNOPE': not a signal name"),
    (["strategy=ddp", "strategy.sequence_parallel=4"], "model.size='quickstart' has 2 attention heads, not divisible"),
    (["strategy=ddp", "strategy.sequence_parallel=2", "trainer.devices=3"],
     "trainer.devices x trainer.num_nodes = 3 ranks do not split into groups of 2"),
    (["strategy=deepspeed_zero2", "trainer=gpu", "strategy.sequence_parallel=2"], "not yet with DeepSpeed"),
    (["strategy.sequence_parallel=0"], "strategy.sequence_parallel=0: must be >= 1"),
])
def test_bad_strategies_fail_at_start(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config(*overrides))


def slurm_env(*, ntasks=8, per_node="4(x2)", nodes=2, procid=5, localid=1, nodeid=1):
    return {"SLURM_NTASKS": str(ntasks), "SLURM_NTASKS_PER_NODE": per_node, "SLURM_NNODES": str(nodes),
            "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), "SLURM_NODEID": str(nodeid),
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "wan_train", "SLURM_NODELIST": "gpu[017-018]"}


def test_simulated_slurm_variables_give_lightning_the_ranks(monkeypatch):
    env = slurm_env()
    launch = detect_launch(env)
    assert (launch.kind, launch.world_size, launch.tasks_per_node, launch.nodes) == ("slurm", 8, 4, 2)
    assert (launch.rank, launch.local_rank, launch.node_rank) == (5, 1, 1)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the Trainer makes this process rank 5 for Lightning's rank-zero-only functions (loggers write nothing on
    # other ranks): restored after the test, so later in-process runs log again
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pytorch_rank_zero
    from lightning_utilities.core import rank_zero as utilities_rank_zero

    for module in (fabric_rank_zero, pytorch_rank_zero, utilities_rank_zero):
        monkeypatch.setattr(module.rank_zero_only, "rank", getattr(module.rank_zero_only, "rank", 0))
    trainer = L.Trainer(accelerator="cpu", devices=4, num_nodes=2, strategy=DDPStrategy(),
                        plugins=[SLURMEnvironment(auto_requeue=False)], logger=False, enable_progress_bar=False)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (8, 5, 1, 1)
    cluster = trainer.strategy.cluster_environment
    assert cluster.main_address == "gpu017" and isinstance(cluster, SLURMEnvironment)


class Trainer:
    def __init__(self, devices, num_nodes=1, accelerator="gpu"):
        self.devices, self.num_nodes, self.accelerator = devices, num_nodes, accelerator


def test_launch_mismatches_are_clear_errors():
    env = slurm_env()
    assert check_launch(Trainer("4", 2), env).world_size == 8
    with pytest.raises(ValueError, match=re.escape("trainer.devices=8 (8 per node), but slurm started 4 processes per "
                                                   "node (--ntasks-per-node=4): set trainer.devices=4, or launch with "
                                                   "--ntasks-per-node=8")):
        check_launch(Trainer("8", 2), env)
    with pytest.raises(ValueError, match=re.escape("trainer.num_nodes=1, but slurm runs on 2 nodes (--nodes=2)")):
        check_launch(Trainer("4", 1), env)
    torchrun = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"}
    assert detect_launch(torchrun).node_rank == 1
    with pytest.raises(ValueError, match=re.escape("--nproc-per-node=2")):
        check_launch(Trainer("[0,1,2]", 2), torchrun)
    assert detect_launch({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bash"}).kind == "local"  # salloc shell
    assert tasks_per_node("4(x3)") == 4
    with pytest.raises(ValueError, match="differ between nodes"):
        tasks_per_node("4,2")


def test_train_sweeps_have_the_submitit_slurm_launcher():
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from wan_train.config.compose import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cpu = compose("config", overrides=["hydra/launcher=slurm", "recipe=quickstart"], return_hydra_config=True)
        gpu = compose("config", overrides=["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4",
                                           "data.num_workers=3"], return_hydra_config=True)
    assert get_class(cpu.hydra.launcher._target_).__name__ == "SlurmLauncher"
    assert cpu.hydra.launcher.max_num_timeout == 10
    # the allocation follows the run: no GPU request on a CPU run, one task per device, workers + 1 CPUs
    assert (cpu.hydra.launcher.gpus_per_node, cpu.hydra.launcher.tasks_per_node, cpu.hydra.launcher.mem_gb) == (
        None, 1, None)
    assert (gpu.hydra.launcher.gpus_per_node, gpu.hydra.launcher.tasks_per_node, gpu.hydra.launcher.cpus_per_task,
            gpu.hydra.launcher.mem_gb) == (4, 4, 4, 256)
    assert cpu.hydra.sweep.dir.startswith("runs/multirun/")  # never multirun/ in the repository


@pytest.mark.parametrize(("overrides", "options"), [
    (["recipe=quickstart", "trainer.devices=2"], "--nodes=1 --ntasks-per-node=2 --cpus-per-task=1"),
    (["trainer=gpu", "trainer.devices=8", "trainer.num_nodes=4", "data.num_workers=4"],
     "--nodes=4 --ntasks-per-node=8 --cpus-per-task=5 --gpus-per-node=8 --mem=524288M"),
    (["trainer=gpu", "trainer.devices=2", "cluster.cpus_per_task=16", "cluster.mem_per_task_gb=100"],
     "--nodes=1 --ntasks-per-node=2 --cpus-per-task=16 --gpus-per-node=2 --mem=204800M"),
    (["trainer.devices=2", "cluster.mem_per_task_gb=2"], "--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --mem=4096M"),
])
def test_the_sbatch_allocation_comes_from_the_runs_settings(overrides, options, capsys):
    from wan_train.training.allocation import main

    assert main(overrides) == 0
    assert capsys.readouterr().out.strip() == options


def test_an_allocation_the_run_does_not_say_is_refused(capsys):
    from wan_train.training.allocation import main

    assert main(["trainer=gpu"]) == 2  # devices=auto: how many GPUs would that be?
    assert capsys.readouterr().err.strip() == ("error: trainer.devices=auto: say how many devices per node SLURM "
                                               "should give this run (trainer.devices=8)")
