"""DeepSpeed ZeRO checkpoints are read weights-only, on real shards: DeepSpeed's engine writes ZeRO-2 / ZeRO-3
checkpoints on the CPU (in a child process, which owns the process group DeepSpeed starts), and
- consolidation gives exactly what DeepSpeed's own, unrestricted reader gives;
- DeepSpeed's resume (engine.load_checkpoint, what the deepspeed strategy calls) reads them through the same forced
  loader and restores the model;
- a crafted shard is refused by both, naming it, and its code never runs.
(The Lightning DeepSpeed strategy itself needs CUDA: tests/gpu/test_strategies_gpu.py.)"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

from tests.helpers import Payload
from wan_train.models import CheckpointError
from wan_train.training.consolidate import load_full

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TAG = "global_step2"

# argv: folder, ZeRO stage, precision, port, "save" | "resume"; prints what the test asserts on
ENGINE = """
import os, sys
import torch, deepspeed
from wan_train.models.checkpoint.pickles import weights_only_loads
from wan_train.parallel.deepspeed import pickled_types

folder, stage, precision, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")


def engine(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "bf16": {"enabled": precision == "bf16"}}
    return deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
                                config=config)[0]


x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
trained = engine(0)
x = x.to(next(trained.parameters()).dtype)
for _ in range(2):
    trained.backward(trained(x).float().square().mean())
    trained.step()
if mode == "save":
    trained.save_checkpoint(folder, tag="global_step2", client_state={"global_step": 2, "loops": {"fit": [1, 2.0]}})
    print("saved")
else:
    fresh = engine(1)
    with weights_only_loads(allow=pickled_types()):
        _, client = fresh.load_checkpoint(folder)
    same = torch.equal(fresh(x), trained(x))
    print("resumed", client["global_step"], "same" if same else "different")
"""


def engine(folder: Path, stage: int, precision: str, mode: str, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENGINE, str(folder), str(stage), precision, str(port), mode],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stage, precision, port", [(2, "bf16", 29611), (3, "fp32", 29612)])
def test_real_zero_shards_consolidate_and_resume_weights_only(tmp_path, stage, precision, port):
    folder = tmp_path / "step=0000002.ckpt"
    done = engine(folder, stage, precision, "save", port)
    assert done.returncode == 0 and "saved" in done.stdout, done.stderr[-3000:]

    full = load_full(folder)
    reference = convert_zero_checkpoint_to_fp32_state_dict(str(folder), str(tmp_path / "unrestricted.ckpt"))
    assert full.keys() == reference.keys() and full["global_step"] == 2 and full["loops"] == {"fit": [1, 2.0]}
    assert full["state_dict"].keys() == reference["state_dict"].keys() == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(torch.equal(full["state_dict"][k], v) for k, v in reference["state_dict"].items())

    done = engine(folder, stage, precision, "resume", port)
    assert done.returncode == 0 and "resumed 2 same" in done.stdout, done.stderr[-3000:]

    # a crafted model-states file: refused by consolidation and by DeepSpeed's resume, naming it
    model_states = next((folder / TAG).glob("*model_states.pt"))
    marker = tmp_path / "MARKER"
    torch.save({**torch.load(model_states, weights_only=True), "payload": Payload(marker)}, model_states)
    with pytest.raises(CheckpointError, match=rf"{model_states}: holds a pickled .*could run code"):
        load_full(folder)
    done = engine(folder, stage, precision, "resume", port)
    assert done.returncode != 0 and f"{model_states}: holds a pickled" in done.stderr
    assert not marker.exists()
