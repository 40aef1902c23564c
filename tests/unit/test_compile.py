"""model.compile (wan_train.models.dit.compile): one compiled block serves every layer and step, with no graph
break, alone and with LoRA, activation checkpointing, the float8 base, block offload and the R2V / multi-shot
extensions; the compiled model computes what the eager one does. Dynamo traces with the aot_eager backend here
(the graphs inductor would get, without its minutes of C++ compiles); the quickstart run below goes through
inductor itself."""

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import dit_inputs, randomize_
from wan_train.config import compose_config
from wan_train.lora import add_adapter
from wan_train.memory import BlockOffload, Placement, place_base
from wan_train.models import ShotLayout, WanDiT, get_size
from wan_train.models.dit.compile import compile_blocks, compile_counts, is_compiled, reset_compile_counts

STEPS = 3


def tiny(*, layers: int = 3, lora: bool = False) -> WanDiT:
    torch.manual_seed(0)
    dit = randomize_(WanDiT(get_size("tiny").dit.replace(num_layers=layers)))
    if lora:
        add_adapter(dit, target="attn_qkvo_ffn", rank=4, alpha=4.0)
        for name, p in dit.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.05)
    return dit.train()


def plain():
    return tiny(), {}


def lora():
    return tiny(lora=True), {}


def checkpointing():
    dit = tiny(lora=True)
    dit.activation_checkpointing = True
    return dit, {}


def float8():
    return place_base(tiny(lora=True), Placement(base_dtype="float8_e4m3fn"), compute_dtype=torch.float32), {}


def offload():
    dit = tiny(lora=True)
    dit.block_offload = BlockOffload(dit, count=2)
    return dit, {}


def references():
    dit = tiny().extend_references(2)
    g = torch.Generator().manual_seed(1)
    nn.init.normal_(dit.reference_embedding, std=0.1)
    return dit, {"refs": [torch.randn(2, 16, 1, 6, 10, generator=g), torch.randn(2, 16, 2, 6, 10, generator=g)]}


def shots():
    dit = tiny().extend_shots(2)
    nn.init.normal_(dit.shot_embedding, std=0.1)
    text = torch.tensor([[-1] * 3 + [0] * 3 + [1] * 5, [-1] * 4 + [0] * 2 + [1] * 5])  # the 11 context tokens
    return dit, {"shots": ShotLayout(frame_shots=torch.tensor([[0, 0, 1], [0, 1, 1]]), text_shots=text)}


VARIANTS = {f.__name__: f for f in (plain, lora, checkpointing, float8, offload, references, shots)}
# frames dynamo compiles over the whole run: one block graph for every layer and step; block offload runs each
# block under no_grad in its forward and again with grad to recompute it in backward (two grad modes)
FRAMES = {"offload": 2}


def train(dit: WanDiT, extra: dict) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    optimizer = torch.optim.SGD([p for p in dit.parameters() if p.requires_grad], lr=0.1)
    outputs = []
    for step in range(STEPS):
        inputs = dit_inputs(dit.config, seed=step, prompt_lens=(7, 9))
        optimizer.zero_grad()
        out = dit(inputs["x"], inputs["t"], inputs["context"], **extra)
        out.square().mean().backward()
        optimizer.step()
        outputs.append(out.detach())
    return outputs, {n: p.detach().clone() for n, p in dit.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_compiled_dit_trains_like_the_eager_one_with_one_graph_and_no_break(variant):
    dit, extra = VARIANTS[variant]()
    compiled = copy.deepcopy(dit)
    if variant == "offload":  # the copy's offload must move the copy's blocks
        compiled.block_offload = BlockOffload(compiled, count=2)
    reset_compile_counts()
    assert compile_blocks(compiled, backend="aot_eager") == 3 and is_compiled(compiled) and not is_compiled(dit)
    eager_out, eager_params = train(dit, extra)
    out, params = train(compiled, extra)
    counts = compile_counts()
    assert counts["graph_breaks"] == 0, variant
    assert counts["frames"] == FRAMES.get(variant, 1) and counts["graphs"] == counts["frames"], counts
    for a, b in zip(eager_out, out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for name, value in eager_params.items():
        torch.testing.assert_close(params[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # in place: the same parameter names, so checkpoints and exports are the eager model's
    assert list(compiled.state_dict()) == list(dit.state_dict())


def test_compile_options_are_checked():
    with pytest.raises(ValueError, match="model.compile_mode='reduce-overhead'"):
        compile_blocks(tiny(), mode="reduce-overhead")
    with pytest.raises(ValueError, match="has no transformer blocks"):
        compile_blocks(nn.Linear(2, 2))
    from wan_train.config.validate import ConfigError, validate

    for overrides, message in ((["model.compile_mode=max-autotune"], "model.compile_mode='max-autotune'"),
                               (["model.attention=flash", "trainer.accelerator=cpu"], "a CUDA kernel; on the CPU"),
                               (["model.attention=xformers"], "model.attention='xformers'"),
                               (["recipe=av_demo", "model.compile=true"], "model.compile with an audio-video model")):
        with pytest.raises(ConfigError, match=message):
            validate(compose_config(["recipe=quickstart", *overrides]))  # the demo data: made on first use


FSDP2 = """
import copy, os, sys
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from tests.helpers import dit_inputs, randomize_
from wan_train.models import WanDiT, get_size
from wan_train.models.dit.compile import compile_blocks, compile_counts, reset_compile_counts
from wan_train.models.dit.model import WanBlock

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
torch.manual_seed(0)
dit = randomize_(WanDiT(get_size("tiny").dit.replace(num_layers=3))).train()
eager = copy.deepcopy(dit)
mesh = init_device_mesh("cpu", (1,))
for module in dit.modules():  # as strategy=fsdp shards (wan_train.parallel.fsdp), then model.compile
    if isinstance(module, WanBlock):
        fully_shard(module, mesh=mesh)
fully_shard(dit, mesh=mesh)
reset_compile_counts()
compile_blocks(dit, backend="aot_eager")
outputs = []
for model in (eager, dit):
    optimizer, out = torch.optim.SGD(model.parameters(), lr=0.1), []
    for step in range(3):
        inputs = dit_inputs(model.config, seed=step)
        optimizer.zero_grad()
        y = model(inputs["x"], inputs["t"], inputs["context"])
        y.square().mean().backward()
        optimizer.step()
        out.append(y.detach())
    outputs.append(out)
counts = compile_counts()
print(counts["graphs"], counts["graph_breaks"], max((a - b).abs().max().item() for a, b in zip(*outputs)))
dist.destroy_process_group()
"""


def test_compiled_blocks_under_fsdp2_share_one_graph_with_no_break():
    """FSDP2's per-block units (strategy=fsdp), then the blocks compiled: one graph for every layer and step, no
    graph break through FSDP's gather hooks, the eager model's outputs (a process of its own: its process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", FSDP2, str(port)], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    graphs, breaks, diff = done.stdout.split()[-3:]
    assert (int(graphs), int(breaks)) == (1, 0) and float(diff) < 1e-4
