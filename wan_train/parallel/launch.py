"""Which launcher started this process (SLURM's srun, torchrun, or none) and whether the run's device count
matches it: trainer.devices x trainer.num_nodes must be the world the launcher built, or ranks wait forever for
peers that never come. Checked at start with an error that says which setting to change."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

# Lightning treats these SLURM job names as an interactive shell, not a batch launch (SLURMEnvironment)
INTERACTIVE_JOB_NAMES = ("bash", "interactive")


@dataclass(frozen=True)
class Launch:
    kind: str  # "slurm" | "torchrun" | "local"
    world_size: int = 1
    tasks_per_node: int = 1
    nodes: int = 1
    rank: int = 0
    local_rank: int = 0
    node_rank: int = 0


def tasks_per_node(value: str) -> int:
    """SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE: "4", or "4(x2)" when several nodes have the same count;
    different counts per node ("4,2") cannot be one uniform Lightning world."""
    counts = {int(m.group(1)) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", value)}
    if len(counts) != 1:
        raise ValueError(f"SLURM tasks per node {value!r} differ between nodes: give every node the same "
                         "--ntasks-per-node")
    return counts.pop()


def detect_launch(env: Mapping[str, str] = os.environ) -> Launch:
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES:
        per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
        world = int(env["SLURM_NTASKS"])
        ids = (int(env.get(name, 0)) for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"))
        return Launch("slurm", world, tasks_per_node(per_node) if per_node else world // nodes, nodes, *ids)
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:  # torchrun / torch.distributed.run
        world, local = int(env["WORLD_SIZE"]), int(env["LOCAL_WORLD_SIZE"])
        return Launch("torchrun", world, local, world // local, int(env.get("RANK", 0)),
                      int(env.get("LOCAL_RANK", 0)), int(env.get("GROUP_RANK", 0)))
    return Launch("local")


def device_count(devices: str, accelerator: str) -> int | None:
    """trainer.devices as a number: "2" -> 2, "auto" -> the visible GPUs (CPU: 1); a list like "[0,1]" -> 2."""
    value = str(devices).strip()
    if value.isdigit():
        return int(value)
    if value.startswith("["):
        return len([v for v in value.strip("[]").split(",") if v.strip()])
    if value in ("auto", "-1"):
        if accelerator == "cpu":
            return 1
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 1
    return None


def check_launch(trainer, env: Mapping[str, str] = os.environ) -> Launch:
    """Raise ValueError when the launcher's world and trainer.devices x trainer.num_nodes disagree."""
    launch = detect_launch(env)
    if launch.kind == "local":
        return launch
    devices = device_count(trainer.devices, trainer.accelerator)
    flag = "--ntasks-per-node" if launch.kind == "slurm" else "--nproc-per-node"
    nodes_flag = "--nodes" if launch.kind == "slurm" else "--nnodes"
    if devices is not None and devices != launch.tasks_per_node:
        raise ValueError(f"trainer.devices={trainer.devices} ({devices} per node), but {launch.kind} started "
                         f"{launch.tasks_per_node} processes per node ({flag}={launch.tasks_per_node}): set "
                         f"trainer.devices={launch.tasks_per_node}, or launch with {flag}={devices} (one process per "
                         "device)")
    if trainer.num_nodes != launch.nodes:
        raise ValueError(f"trainer.num_nodes={trainer.num_nodes}, but {launch.kind} runs on {launch.nodes} nodes "
                         f"({nodes_flag}={launch.nodes}): set trainer.num_nodes={launch.nodes}")
    return launch
