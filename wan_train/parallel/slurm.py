"""What to ask SLURM for, from the run's own settings: one task per device, GPUs only when the run uses them, a
CPU per loader worker plus one, and memory per task.

  trainer.accelerator=gpu trainer.devices=8 trainer.num_nodes=2  ->  --nodes=2 --ntasks-per-node=8
                                                                     --gpus-per-node=8 --cpus-per-task=3 --mem=...
  trainer.accelerator=cpu trainer.devices=2                      ->  --nodes=1 --ntasks-per-node=2 --cpus-per-task=3

Used by `slurm/submit` (sbatch with these options before the user's own, which win; the command line is
wan_train.training.allocation) and, through the `wan_slurm:` resolver, by Hydra's submitit launcher presets
(conf/hydra/launcher/slurm.yaml, and eval's).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from wan_train.parallel.launch import device_count

GPU_MEM_PER_TASK_GB = 64  # host memory per GPU task unless cluster.mem_per_task_gb says otherwise


@dataclass(frozen=True)
class Allocation:
    nodes: int
    tasks_per_node: int
    gpus_per_node: int | None  # None: no GPU request at all (a CPU partition refuses --gpus-per-node=0)
    cpus_per_task: int
    mem_per_task_gb: float | None  # None: the partition's default

    def sbatch_options(self) -> list[str]:
        out = [f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}",
               f"--cpus-per-task={self.cpus_per_task}"]
        if self.gpus_per_node:
            out.append(f"--gpus-per-node={self.gpus_per_node}")
        if self.mem_per_task_gb:
            out.append(f"--mem={int(self.mem_per_task_gb * 1024 * self.tasks_per_node)}M")
        return out


def train_allocation(cfg) -> Allocation:
    """The allocation of one training job of `cfg` (the composed train config)."""
    trainer, cluster = cfg.trainer, cfg.cluster
    gpu = trainer.accelerator in ("gpu", "cuda", "auto")
    unknown = gpu and str(trainer.devices).strip() in ("auto", "-1")  # the GPUs of a node not yet allocated
    devices = None if unknown else device_count(trainer.devices, trainer.accelerator)
    if devices is None:
        raise ValueError(f"trainer.devices={trainer.devices}: say how many devices per node SLURM should give "
                         "this run (trainer.devices=8)")
    cpus = cluster.get("cpus_per_task") or cfg.data.num_workers + 1
    memory = cluster.get("mem_per_task_gb") or (GPU_MEM_PER_TASK_GB if gpu else None)
    return Allocation(trainer.num_nodes, devices, devices if gpu else None, cpus, memory)


def eval_allocation(cfg) -> Allocation:
    """One eval sweep cell: one task, one GPU unless device=cpu."""
    gpu = str(cfg.get("device", "auto")) != "cpu"
    return Allocation(1, 1, 1 if gpu else None, 4 if gpu else 2, 32 if gpu else None)


def _resolve(field: str, *, _root_) -> int | float | None:
    """`${wan_slurm:gpus_per_node}` in a launcher preset: the field of this run's allocation."""
    allocation = train_allocation(_root_) if "trainer" in _root_ else eval_allocation(_root_)
    value = getattr(allocation, field)
    if field == "mem_per_task_gb" and value is not None:  # submitit's mem_gb is per node
        value = value * allocation.tasks_per_node
    return value


def register_resolver() -> None:
    if not OmegaConf.has_resolver("wan_slurm"):
        OmegaConf.register_new_resolver("wan_slurm", _resolve)
