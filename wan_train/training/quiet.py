"""Third-party messages a training run prints that we know to be irrelevant, filtered where they are made, each
with why it is safe to drop. Anything not named here still shows."""

import logging
import os
import warnings

# Lightning's info lines (logger lightning.pytorch.utilities.rank_zero) that say nothing about this run
LIGHTNING_INFO = (
    "💡 Tip:",  # an advertisement for Lightning's hosted logger (litlogger)
    "TPU available",  # there are no TPUs in our world; the GPU line stays
    "`Trainer.fit` stopped: `max_steps=",  # the normal end of every run; train.py prints its own summary
)


class _Drop(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_third_party() -> None:
    """Install the filters (idempotent; process-wide, as warnings filters are)."""
    if "SLURM_JOB_ID" not in os.environ:
        # Lightning sees `srun` on PATH outside a job and suggests launching with it: this process is not in a SLURM
        # job, so there is nothing to use srun for (inside one, slurm/launch.sh starts the tasks with srun, and a
        # mismatch is our own one-line error: wan_train.parallel.launch.check_launch)
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    # Lightning 2.6's own pytree helper asks torch 2.13 a deprecated question (its code, not ours; the answer is right)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # a resumed run writes its checkpoints into the folder that holds the ones it resumed from: that is the point
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _Drop) for f in rank_zero.filters):
        rank_zero.addFilter(_Drop(LIGHTNING_INFO))
