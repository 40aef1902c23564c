"""One file from a sharded checkpoint, loadable at any world size:

    python -m wan_train.training.consolidate RUN_DIR [--step N]

FSDP (strategy=fsdp, state_dict_type=sharded) and DeepSpeed ZeRO write `checkpoints/step=N.ckpt/` as a folder of
per-rank shards. This gathers it with Lightning's own readers (torch.distributed.checkpoint for FSDP, DeepSpeed's
zero_to_fp32 for ZeRO) into `RUN_DIR/consolidated/step=N.ckpt`, a plain Lightning checkpoint (weights, optimizer
state, loops, callbacks) that `resume=` takes with any strategy and world size, and that generate.py / eval read
(`ckpt=RUN_DIR step=N`). Single-file checkpoints (ddp, auto) need none of this.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

from wan_train.inference.loading import run_checkpoint
from wan_train.parallel.fsdp import native_optimizer_state
from wan_train.training.callbacks import AtomicCheckpointIO

log = logging.getLogger(__name__)

CONSOLIDATED = "consolidated"
FSDP_METADATA = "meta.pt"  # Lightning's sharded checkpoints keep loops / callbacks here
DEEPSPEED_LATEST = "latest"  # DeepSpeed writes the tag of its newest save here


def checkpoint_kind(path: Path) -> str:
    """'file' | 'fsdp' | 'deepspeed' for a Lightning checkpoint path."""
    if path.is_file():
        return "file"
    if (path / FSDP_METADATA).is_file() or any(path.glob("*.distcp")):
        return "fsdp"
    if (path / DEEPSPEED_LATEST).is_file() or any(path.glob("*/mp_rank_*_model_states.pt")):
        return "deepspeed"
    raise ValueError(f"{path}: a folder that is neither an FSDP (meta.pt, *.distcp) nor a DeepSpeed (latest, "
                     "*/mp_rank_*_model_states.pt) sharded checkpoint")


def load_full(path: Path) -> dict:
    """The whole Lightning checkpoint at `path` (a file, or an FSDP / DeepSpeed shard folder) in CPU memory."""
    kind = checkpoint_kind(path)
    if kind == "file":
        return torch.load(path, map_location="cpu", weights_only=True)
    if kind == "fsdp":
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        checkpoint = _load_distributed_checkpoint(path)
        optimizers = sorted((k for k in checkpoint if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
        # optimizer states are keyed by parameter name in the shards; a plain checkpoint numbers them
        checkpoint["optimizer_states"] = [native_optimizer_state(checkpoint.pop(k)) for k in optimizers]
        return checkpoint
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "full.ckpt"
        convert_zero_checkpoint_to_fp32_state_dict(str(path), str(out))
        return torch.load(out, map_location="cpu", weights_only=False)  # written just now by Lightning


def consolidate(run_dir: str | Path, step: int | None = None) -> Path:
    """Write RUN_DIR/consolidated/step=N.ckpt (atomically) and return it; a single-file checkpoint is returned
    as it is."""
    run_dir = Path(run_dir)
    step, path = run_checkpoint(run_dir, step)
    if path.is_file():
        log.info("%s is one file already", path)
        return path
    out = run_dir / CONSOLIDATED / path.name  # where generate.py looks (wan_train.inference.loading)
    AtomicCheckpointIO().save_checkpoint(load_full(path), out)
    log.info("%s (%s shards) -> %s", path, checkpoint_kind(path), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_train.training.consolidate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(consolidate(args.run_dir, args.step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
