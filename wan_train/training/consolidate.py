"""One file from a sharded checkpoint, loadable at any world size, and the weights for other tools:

    python -m wan_train.training.consolidate RUN_DIR [--step N] [--export [--ema]]

FSDP (strategy=fsdp, state_dict_type=sharded) and DeepSpeed ZeRO write `checkpoints/step=N.ckpt/` as a folder of
per-rank shards. This gathers it (torch.distributed.checkpoint for FSDP, DeepSpeed's zero_to_fp32 for ZeRO, every
file read weights-only) into `RUN_DIR/consolidated/step=N.ckpt`, a plain Lightning checkpoint (weights, optimizer
state, loops, callbacks) that `resume=` takes with any strategy and world size, and that generate.py / eval read
(`ckpt=RUN_DIR step=N`). Single-file checkpoints (ddp, auto) need none of this.

--export writes step N's DiT in the official layout (a LoRA run: its adapter as a peft folder) for other tools,
from any checkpoint of the run: see export().
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from wan_train.inference.loading import dit_from_run, run_checkpoint
from wan_train.lora import base_identity
from wan_train.models import EXPERTS, CheckpointError, load_dit, save_dit
from wan_train.models.checkpoint.distributed import read_distributed
from wan_train.models.checkpoint.pickles import load_pickled, weights_only_loads
from wan_train.parallel.deepspeed import LATEST, deepspeed_tag, pickled_types
from wan_train.parallel.fsdp import METADATA, native_optimizer_state
from wan_train.training.adapters import export_adapter
from wan_train.training.callbacks import AtomicCheckpointIO

log = logging.getLogger(__name__)

CONSOLIDATED = "consolidated"


def checkpoint_kind(path: Path) -> str:
    """'file' | 'fsdp' | 'deepspeed' for a Lightning checkpoint path."""
    if path.is_file():
        return "file"
    if (path / METADATA).is_file() or any(path.glob("*.distcp")):
        return "fsdp"
    if (path / LATEST).is_file() or any(path.glob("*/mp_rank_*_model_states.pt")):
        return "deepspeed"
    raise ValueError(f"{path}: a folder that is neither an FSDP (meta.pt, *.distcp) nor a DeepSpeed (latest, "
                     "*/mp_rank_*_model_states.pt) sharded checkpoint")


def load_full(path: Path) -> dict:
    """The whole Lightning checkpoint at `path` (a file, or an FSDP / DeepSpeed shard folder) in CPU memory, every
    file read weights-only (a crafted one is refused, naming it: wan_train.models.checkpoint.pickles)."""
    kind = checkpoint_kind(path)
    if kind == "file":
        return load_pickled(path)
    if kind == "fsdp":
        checkpoint = read_distributed(path)
        checkpoint.update(load_pickled(path / METADATA))  # loops, callbacks, ... beside the shards (Lightning's)
        optimizers = sorted((k for k in checkpoint if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
        # optimizer states are keyed by parameter name in the shards; a plain checkpoint numbers them
        checkpoint["optimizer_states"] = [native_optimizer_state(checkpoint.pop(k)) for k in optimizers]
        return checkpoint
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    deepspeed_tag(path)  # `latest` names a sub-folder, not a path elsewhere
    # Lightning's conversion (DeepSpeed's zero_to_fp32 merge plus the Lightning state of rank 0's model file),
    # with each of its torch.load calls weights-only: see wan_train.parallel.deepspeed
    with tempfile.TemporaryDirectory() as scratch, weights_only_loads(allow=pickled_types()):
        return convert_zero_checkpoint_to_fp32_state_dict(str(path), str(Path(scratch) / "full.ckpt"))


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


def export(run_dir: str | Path, step: int | None = None, *, ema: bool = False) -> list[Path]:
    """Step N's weights as files other tools read, whatever wrote the checkpoint (one file, or shards: consolidated
    first): the DiT in the official layout, RUN_DIR/consolidated/step=N/dit/, or for a LoRA run its adapter as a
    peft folder stamped with the base's identity, .../adapter/ (`python -m wan_train.lora import` registers it as a
    version). `ema`: the averaged weights (dit_ema/, adapter_ema/). expert=both runs: one per expert folder."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    experts = [(run_dir / e, e) for e in EXPERTS] if cfg.expert.name == "both" else [(run_dir, cfg.expert.name)]
    written = []
    for folder, expert in experts:
        step_n, path = run_checkpoint(folder, step)
        if path.is_dir():
            consolidate(folder, step_n)
        out = folder / CONSOLIDATED / f"step={step_n:07d}" / (("adapter" if cfg.lora.enabled else "dit")
                                                              + ("_ema" if ema else ""))
        if cfg.lora.enabled:  # the base's identity as training stamped it: before any reference / shot slots
            identity = base_identity(load_dit(cfg.model.checkpoint, expert=expert, dtype=torch.float32))
        dit, _ = dit_from_run(folder, cfg, expert, dtype=torch.float32, ema=ema, step=step_n, merge=False)
        if cfg.lora.enabled:
            if export_adapter(dit, out, base=identity, expert=expert) is None:
                raise ValueError(f"{folder}: a DoRA adapter (lora.dora=true) has no plain LoRA file; "
                                 "load the run folder itself (generate.py ckpt=RUN_DIR step=N)")
        else:
            save_dit(dit, out, layout="official")
        log.info("%s (step %d%s) -> %s", folder, step_n, ", EMA" if ema else "", out)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_train.training.consolidate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")
    parser.add_argument("--export", action="store_true", help="also write the DiT in the official layout (a LoRA "
                        "run: its adapter as a peft folder) under RUN_DIR/consolidated/step=N/")
    parser.add_argument("--ema", action="store_true", help="with --export: the EMA weights")
    args = parser.parse_args(argv)
    if args.ema and not args.export:
        parser.error("--ema selects what --export writes; add --export")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = export(args.run_dir, args.step, ema=args.ema) if args.export else [consolidate(args.run_dir, args.step)]
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckpointError, ValueError, FileNotFoundError) as error:  # bad input: one line naming the file
        sys.exit(f"error: {error}")
