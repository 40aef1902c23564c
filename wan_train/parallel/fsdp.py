"""strategy=fsdp: torch FSDP2 (`fully_shard`, per-parameter DTensor sharding) through Lightning's
ModelParallelStrategy. One unit per DiT block (WanBlock) plus the root; the same engine runs on GPUs (NCCL) and on
the CPU (gloo), so the CPU tests run the real thing.

- sharding_strategy: FULL_SHARD (parameters re-sharded after each block's forward), SHARD_GRAD_OP (kept gathered
  from forward to backward: more memory, fewer all-gathers), HYBRID_SHARD (sharded within a node, replicated
  across nodes). NO_SHARD is DDP: use strategy=ddp.
- Mixed precision follows trainer.precision through Lightning's autocast (bf16-mixed keeps fp32 parameters, so the
  DiT's fp32 islands stay fp32, exactly as under DDP).
- Activation checkpointing is the DiT's own, per block (model.activation_checkpointing).
- Checkpoints: state_dict_type=sharded writes a folder per step (torch.distributed.checkpoint shards + meta.pt);
  `python -m wan_train.training.consolidate` makes one file that loads at any world size. LoRA runs keep the
  adapter only, as the single-file checkpoints do. state_dict_type=full gathers one file on rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

try:  # torch >= 2.6
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
except ImportError:  # torch 2.4 / 2.5
    from torch.distributed._composable.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:
    from torch.distributed._tensor import DTensor, distribute_tensor

from wan_train.models.checkpoint.distributed import SafeFileSystemReader, load_distributed
from wan_train.models.checkpoint.pickles import load_pickled
from wan_train.models.dit.fusion import OviDiT
from wan_train.models.dit.model import WanBlock
from wan_train.parallel.strategy import SHARDING

METADATA = "meta.pt"  # loops, callbacks and the rest of a sharded checkpoint (Lightning's name)


class FSDPStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy with its mesh as one data-parallel dimension over every rank (no tensor
    parallelism), and checkpoints that leave out frozen weights when the module asks for it (LoRA)."""

    def __init__(self, *, sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "sharded",
                 cpu_offload: bool = False, **kwargs):
        if sharding_strategy not in SHARDING:
            raise ValueError(f"sharding_strategy={sharding_strategy!r}: expected one of {list(SHARDING)}")
        super().__init__(save_distributed_checkpoint=state_dict_type == "sharded", **kwargs)
        self.sharding_strategy, self.cpu_offload = sharding_strategy, cpu_offload

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        self._data_parallel_size, self._tensor_parallel_size = self.world_size, 1

    def shard(self, dit: nn.Module) -> None:
        """fully_shard every WanBlock, then the DiT (its embeddings and head); a DiT sharded before (Lightning
        calls configure_model again for a later fit) is left as it is. An OviDiT is sharded whole (below)."""
        if isinstance(dit, FSDPModule):
            return
        mesh = self.device_mesh["data_parallel"]
        if self.sharding_strategy == "HYBRID_SHARD":
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(self.root_device.type, (self.num_nodes, self.num_processes),
                                    mesh_dim_names=("replicate", "shard"))
        options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": self.sharding_strategy != "SHARD_GRAD_OP"}
        if self.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
        # a twin-tower (audio-video) model is one unit: its fusion blocks call the two towers' block submodules
        # directly, so a per-block unit would never be gathered (its sharded parameters stay at rest, its optimizer
        # state sharded; the whole model is gathered for each forward)
        if not isinstance(dit, OviDiT):
            for module in dit.modules():
                if isinstance(module, WanBlock):
                    fully_shard(module, **options)
        fully_shard(dit, **options)

    def _frozen_left_out(self) -> bool:
        return not self.lightning_module.strict_loading  # the module keeps trained weights only (LoRA)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=not self._save_distributed_checkpoint, cpu_offload=True,
                                   ignore_frozen_params=self._frozen_left_out())
        return get_model_state_dict(self.model, options=options)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """A shard folder at the same world size, or one file (consolidated, or from a ddp run) at any. A LoRA
        checkpoint holds the trained weights only: they must be exactly this run's, and the frozen base stays.
        Every file is read weights-only, whatever `weights_only` Lightning passes (wan_train.models.checkpoint
        .pickles): Lightning's own readers would unpickle meta.pt and DCP's .metadata unrestricted."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict, set_model_state_dict,
                                                             set_optimizer_state_dict)

        path = Path(self.broadcast(checkpoint_path))
        frozen_left_out = self._frozen_left_out()
        if path.is_dir():
            options = StateDictOptions(ignore_frozen_params=frozen_left_out)
            state = {"state_dict": get_model_state_dict(self.model, options=options)}
            if frozen_left_out:
                stored = {key.removeprefix("state_dict."): tuple(meta.size) for key, meta
                          in SafeFileSystemReader(path).read_metadata().state_dict_metadata.items()
                          if key.startswith("state_dict.")}
                _check_trained(path, stored, {n: tuple(t.shape) for n, t in state["state_dict"].items()})
            state.update({f"optimizer_{i}": get_optimizer_state_dict(self.model, optimizer)
                          for i, optimizer in enumerate(self.optimizers)})
            load_distributed(state, path)
            set_model_state_dict(self.model, state["state_dict"], options=StateDictOptions(strict=not frozen_left_out))
            for i, optimizer in enumerate(self.optimizers):
                set_optimizer_state_dict(self.model, optimizer, state[f"optimizer_{i}"])
            return load_pickled(path / METADATA)
        # one file: every rank reads it (memory-mapped) and keeps its own shards
        checkpoint = load_pickled(path, mmap=True)
        if frozen_left_out:
            _check_trained(path, {n: tuple(t.shape) for n, t in checkpoint["state_dict"].items()},
                           {n: tuple(p.shape) for n, p in self.model.named_parameters() if p.requires_grad})
        set_model_state_dict(self.model, dict(checkpoint["state_dict"]),  # a copy: torch fills in what it lacks
                             options=StateDictOptions(full_state_dict=True, strict=not frozen_left_out))
        for optimizer, saved in zip(self.optimizers, checkpoint.get("optimizer_states", []), strict=False):
            set_optimizer_state_dict(self.model, optimizer, named_optimizer_state(saved, self.model, optimizer),
                                     options=StateDictOptions(full_state_dict=True))
        return checkpoint


def _check_trained(path: Path, stored: dict[str, tuple], expected: dict[str, tuple]) -> None:
    """Names and shapes of a checkpoint's trained weights against this run's."""
    if stored != expected:
        missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
        resized = [f"{n} {stored[n]} (this run: {expected[n]})" for n in sorted(stored.keys() & expected.keys())
                   if stored[n] != expected[n]]
        raise ValueError(f"{path}: the checkpoint's trained weights do not match this run's (lora.*: target, rank, "
                         f"dora): missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {resized[:3]}")


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def reshard(module: nn.Module) -> None:
    """Free the gathered weights FSDP keeps after a forward pass without backward (evaluation, sampling: the root
    and SHARD_GRAD_OP units stay gathered until a backward that never comes); a no-op for other modules."""
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def full_state_dict(module: nn.Module, *, trained_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole state of a module (or its trained parameters only: a LoRA's adapter, not the frozen base) in CPU
    memory: gathered from the shards when FSDP shards it (a collective: every rank calls it, rank 0 receives, the
    others get {}), else its own state_dict()."""
    if not is_sharded(module):
        state = module.state_dict(keep_vars=trained_only)
        return {n: t.detach() for n, t in state.items() if t.requires_grad} if trained_only else state
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trained_only)
    return get_model_state_dict(module, options=options)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective), any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`full` sharded like `param` when that is a DTensor (each rank keeps its own part), else `full` itself."""
    if not isinstance(param, DTensor) or isinstance(full, DTensor):
        return full
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements)


def named_optimizer_state(state: dict, model: nn.Module, optimizer) -> dict:
    """torch's own optimizer state (parameters numbered in `optimizer`'s order, frozen parameters absent) -> keyed
    by the parameters' names in `model`, the form torch.distributed.checkpoint's set_optimizer_state_dict takes."""
    groups = state["param_groups"]
    if not groups or not all(isinstance(p, int) for g in groups for p in g["params"]):
        return state
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {"state": {order[i]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in groups]}


def native_optimizer_state(state: dict) -> dict:
    """An optimizer state keyed by parameter names (torch.distributed.checkpoint's form) -> torch's own form
    (parameters numbered in param_groups order), which Optimizer.load_state_dict and every strategy take."""
    groups = state["param_groups"]
    if not groups or all(isinstance(p, int) for g in groups for p in g["params"]):
        return state
    index, out_groups = {}, []
    for group in groups:
        ids = []
        for name in group["params"]:
            index[name] = len(index)
            ids.append(index[name])
        out_groups.append({**group, "params": ids})
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": out_groups}
