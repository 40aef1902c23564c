"""Which checkpoint a run resumes from: `resume=auto` (the newest intact one), `never`, or a file.

A checkpoint damaged on disk (a zero-byte or truncated file after a full disk or a crash outside our atomic writes,
a shard folder missing its metadata) is found before the Trainer is built, with a cheap check: a torch zip's
directory sits at its end, so a truncated file does not open as a zip. resume=auto then falls back to the newest
intact checkpoint and warns, naming the damaged one (the run redoes those steps and saves over it); an explicit
resume=FILE that is damaged fails, naming it. A file that is intact but holds more than weights is refused when
it is read (wan_train.models.checkpoint.pickles), never skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from wan_train.inference.loading import run_checkpoints
from wan_train.models import CheckpointError
from wan_train.models.checkpoint.distributed import DCP_METADATA
from wan_train.models.checkpoint.pickles import torch_file_problem
from wan_train.parallel.deepspeed import deepspeed_tag
from wan_train.parallel.fsdp import METADATA
from wan_train.training.consolidate import checkpoint_kind

log = logging.getLogger(__name__)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` (a file, or an FSDP / DeepSpeed shard folder) cannot be resumed, or None."""
    path = Path(path)
    if not path.is_dir():
        return torch_file_problem(path)
    try:
        kind = checkpoint_kind(path)
    except ValueError:
        return "a folder that is neither an FSDP nor a DeepSpeed shard folder"
    if kind == "fsdp":  # DCP's shards and metadata, and Lightning's meta.pt
        if not (path / DCP_METADATA).is_file() or (path / DCP_METADATA).stat().st_size == 0:
            return f"a shard folder without its {DCP_METADATA}"
        return _named(path / METADATA, torch_file_problem(path / METADATA))
    try:
        folder = path / deepspeed_tag(path)
    except CheckpointError as error:
        return str(error)
    files = sorted(folder.glob("*_model_states.pt")) + sorted(folder.glob("*_optim_states.pt"))
    if not files:
        return f"{folder} holds no *_model_states.pt / *_optim_states.pt"
    return next((_named(f, problem) for f in files if (problem := torch_file_problem(f))), None)


def _named(path: Path, problem: str | None) -> str | None:
    return None if problem is None else f"{path.name}: {problem}"


def newest_intact(run_dir: Path) -> tuple[int, Path] | None:
    """(step, path) of the newest checkpoint in run_dir/checkpoints that is intact (None: there are none); each
    newer damaged one is skipped with a warning naming it, and a run whose checkpoints are all damaged fails."""
    found = sorted(run_checkpoints(run_dir).items(), reverse=True)
    for step, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return step, path
        log.warning("resume=auto: skipping the damaged checkpoint %s (%s); resuming from the one before", path,
                    problem)
    if found:  # never a silent fresh start over a run's checkpoints
        raise CheckpointError(f"resume=auto: every checkpoint of {run_dir} is damaged, the newest "
                              f"{found[0][1]} ({checkpoint_problem(found[0][1])}); resume=never starts afresh")
    return None


def resume_path(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint `resume=` names for the run in `run_dir` (None: start from scratch); an explicit one that is
    damaged is a CheckpointError naming it."""
    if resume == "never":
        return None
    if resume == "auto":
        newest = newest_intact(run_dir)
        return newest[1] if newest else None
    path = Path(resume)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"resume={path}: {problem}")
    return path
