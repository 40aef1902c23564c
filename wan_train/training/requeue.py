"""SLURM requeue: signal -> checkpoint -> requeue -> resume=auto.

sbatch --signal=USR1@180 makes SLURM send SIGUSR1 to every task 180 s before the time limit (and a preempting
scheduler sends it before killing). The handler only sets a flag; at the next step boundary the ranks agree
(one all-reduce of a bool), every rank takes part in saving checkpoints/step=N.ckpt (sharded engines write
their shards), rank 0 runs `scontrol requeue $SLURM_JOB_ID`, and training stops without exporting weights or
registering an adapter (the run is not finished). The requeued job starts the same command, and resume=auto
picks that checkpoint up, so the losses are those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class RequeueOnSignal(L.Callback):
    def __init__(self, signal_name: str, *, checkpoint_dir: Path):
        self.signum = getattr(signal, signal_name)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.received = False
        self.requeued_at: int | None = None  # the step whose checkpoint the requeued job resumes from
        self._previous = None

    def _on_signal(self, signum, frame) -> None:
        self.received = True  # async-signal-safe: the work happens at the next step boundary

    def on_fit_start(self, trainer, module) -> None:
        self._previous = signal.signal(self.signum, self._on_signal)

    def on_fit_end(self, trainer, module) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # only between optimizer steps: mid-accumulation, a checkpoint would lose the summed gradients
        # ranks may see the signal at different steps: any rank's flag stops all of them at the same step
        stop = trainer.strategy.reduce_boolean_decision(self.received, all=False)
        if not stop:
            return
        step = trainer.global_step
        path = self.checkpoint_dir / f"step={step:07d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # collective: every rank calls it; a whole checkpoint
        self.requeued_at = step
        if trainer.is_global_zero:
            requeue_job(path)
        trainer.should_stop = True


def requeue_job(path: Path) -> None:
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        log.warning("requeue signal outside a SLURM job: checkpoint %s written; run the same command to resume", path)
        return
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    target = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else job
    result = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True)
    if result.returncode != 0:
        log.error("scontrol requeue %s failed (%s); resume by resubmitting the job: it continues from %s", target,
                  result.stderr.strip(), path)
    else:
        log.info("checkpoint %s written; job %s requeued", path, target)
