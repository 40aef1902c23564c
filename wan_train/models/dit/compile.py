"""model.compile: torch.compile per DiT block (regional compilation). Every WanBlock runs the same code on
parameters of the same shapes, so dynamo traces one block once and every layer reuses that graph: a 30-layer DiT
costs one block's compile, not the whole model's, and a block is also the unit activation checkpointing, block
offload and FSDP2 work on, so they wrap a compiled block as they wrap an eager one. The block's forward (norms,
modulation, attention, FFN; LoRA factors and float8 weights where the base has them; R2V / multi-shot inputs) has
no graph break, and nothing in it depends on the step or the layer, so a run compiles once per input shape (a
bucket) and grad mode (training; held-out losses under no_grad), never again per step or layer
(tests/unit/test_compile.py counts both). Shapes are static (dynamic=False): each bucket gets kernels for its own
sizes, and a batch of another size (the one-clip held-out batches beside training's) is one more static graph,
never an automatic-dynamic recompile of the training graph; the recompile limit is raised to MAX_GRAPHS so that
a run with many buckets keeps compiling them. The training module compiles the blocks once the strategy has wrapped
the DiT (FlowMatchingModule.configure_model).

`block.compile()` compiles the module's call in place: parameter names, state dicts, checkpoints and exports are
those of the eager model."""

from __future__ import annotations

import torch
from torch import nn

# torch.compile modes a block may use: CUDA-graph modes ("reduce-overhead", "max-autotune") replay fixed memory
# addresses, which FSDP's gathered weights and block offload's moving ones do not keep
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
MAX_GRAPHS = 64  # graphs one block may compile: (bucket shapes) x (grad modes); dynamo's default limit is 8


def compile_blocks(dit: nn.Module, *, mode: str = "default", backend: str = "inductor") -> int:
    """Compile each transformer block of `dit` in place (already compiled ones are left); returns their count."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"model.compile_mode={mode!r}: expected one of {list(COMPILE_MODES)}")
    blocks = getattr(dit, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ValueError(f"model.compile: {type(dit).__name__} has no transformer blocks to compile")
    dit.grad_into_blocks = True  # one graph for block 0 too (WanDiT.grad_into_blocks)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), MAX_GRAPHS))
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile(backend=backend, mode=None if mode == "default" else mode, dynamic=False)
    return len(blocks)


def is_compiled(dit: nn.Module) -> bool:
    return any(getattr(block, "_compiled_call_impl", None) is not None for block in getattr(dit, "blocks", ()))


def compile_counts() -> dict[str, int]:
    """Dynamo's counts so far in this process: frames compiled (a recompile is one more), graphs and graph breaks."""
    from torch._dynamo.utils import counters

    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values())}


def reset_compile_counts() -> None:
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
