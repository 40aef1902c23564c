"""SLURM requeue and preemption at any moment of a job: signal -> safe point -> checkpoint -> loggers -> requeue.

`signals.install(cluster)` runs at process start (train.py) whenever cluster.requeue is set. Its handler only records
the signal, so a signal can never kill or interrupt the job, whenever it comes:
- cluster.requeue_signal (SIGUSR1: sbatch --signal=USR1@180 sends it before the time limit, and SLURM may send it
  up to a minute early, during start-up);
- SIGTERM under SLURM: preemption (PreemptMode=REQUEUE or CANCEL sends SIGTERM, then SIGKILL after the grace
  time), or scancel.

The run acts on it at the next safe point: the start of training, each optimizer-step boundary (the ranks agree
with one all-reduce of a bool, so all stop at the same step), and the moment before the export. It checkpoints
if it has trained since the last checkpoint (every rank takes part: sharded engines write their shards),
finishes its loggers (W&B writes its summary; the requeued job continues the same W&B run), and then, as the
very last thing (SLURM kills every task of a requeued job at once):
- requeue signal: rank 0 runs `scontrol requeue $SLURM_JOB_ID` and every task waits for SLURM to end it (a job
  whose tasks all exited first may end before the requeue takes hold); the requeued job starts the same command
  and resume=auto continues from the checkpoint, with the losses of an uninterrupted run;
- SIGTERM: no `scontrol requeue` (SLURM requeues a preempted job itself; a cancelled job stays cancelled).
Either way a stopped run exits non-zero (EXIT_STOPPED) with a line saying where it stopped and how it continues:
never 0 with work undone.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L

from wan_train.training.signals import received, reinstall, signal_name

log = logging.getLogger(__name__)

EXIT_STOPPED = 3  # stopped by a signal at a safe point, checkpoint written, work left (requeued or resubmit)
REQUEUE_WAIT = 120.0  # seconds a requeued job's task waits for SLURM to end it


def agreed(strategy) -> int | None:
    """The signal any rank received, the same answer on every rank (a collective: every rank must call it)."""
    stop = strategy.reduce_boolean_decision(received() is not None, all=False)
    if not stop:
        return None
    # SIGTERM on any rank means SIGTERM for all: the ranks agree on the kind too
    term = strategy.reduce_boolean_decision(received() == signal.SIGTERM, all=False)
    return signal.SIGTERM if term else (received() or signal.SIGUSR1)


class StopOnSignal(L.Callback):
    """Stops training at the first safe point after a recorded signal, with a checkpoint of the step reached."""

    def __init__(self, *, checkpoint_dir: Path, checkpoint_every: int):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_every = checkpoint_every
        self.stopped: int | None = None  # the signal it stopped on
        self.checkpoint: Path | None = None
        self.started_at = 0

    def on_train_start(self, trainer, module) -> None:
        reinstall()
        self.started_at = trainer.global_step  # resumed from this step's checkpoint (or 0: nothing to lose)
        self._check(trainer)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # only between optimizer steps: mid-accumulation, a checkpoint would lose the summed gradients
        self._check(trainer)

    def _check(self, trainer) -> None:
        signum = agreed(trainer.strategy)
        if signum is None:
            return
        step = trainer.global_step
        if step > self.started_at:  # trained since the last checkpoint
            self.checkpoint = self.checkpoint_dir / f"step={step:07d}.ckpt"
            if step % self.checkpoint_every:  # ModelCheckpoint saves the scheduled ones itself
                trainer.save_checkpoint(self.checkpoint, weights_only=False)  # collective: a whole checkpoint
        self.stopped = signum
        trainer.should_stop = True
        log.info("%s received: training stops at step %d", signal_name(signum), step)


def finish_stopped(signum: int, *, step: int, checkpoint: Path | None, is_global_zero: bool, barrier,
                   wait_for_kill: float = REQUEUE_WAIT) -> None:
    """The last act of a stopped run, after its checkpoint and loggers: rank 0 says where it stopped and, on the
    requeue signal, requeues the job. A requeued job's tasks then wait for SLURM to end them (SIGTERM back to its
    default): a task that exited first could end the job before the requeue took hold. The process then exits
    EXIT_STOPPED."""
    where = f"checkpoint {checkpoint}" if checkpoint else "no new checkpoint (nothing trained since the last one)"
    barrier()  # every rank has written its part and closed its loggers
    if signum == signal.SIGTERM:
        line = (f"stopped by SIGTERM (preemption or scancel) at step {step}: {where}; a requeued job continues "
                "from it (resume=auto); after scancel, submit the same command again to continue")
        if is_global_zero:
            print(line, file=sys.stderr, flush=True)
        return
    line, requeued = f"stopped by {signal_name(signum)} at step {step}: {where}", False
    if is_global_zero:
        requeued, said = requeue_job()
        line += "; " + said
        print(line, file=sys.stderr, flush=True)
    barrier()  # nobody leaves before the requeue is asked for
    if "SLURM_JOB_ID" in os.environ and (requeued or not is_global_zero):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(wait_for_kill)  # SLURM ends every task of the requeued job now; after this, exit anyway


def requeue_job(*, tries: int = 3, pause: float = 5.0) -> tuple[bool, str]:
    """scontrol requeue this job (or array element): (done, what to tell the user). A busy controller can time
    scontrol out after it took the request: a failure counts as done when the job's restart count went up, and a
    request that did not take is tried again."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return False, "not a SLURM job: run the same command again to continue (resume=auto)"
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    target = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else job
    for attempt in range(tries):
        result = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True)
        if result.returncode == 0 or requeued_already(target):
            return True, f"job {target} requeued; it continues from there (resume=auto)"
        if attempt + 1 < tries:
            time.sleep(pause)
    return False, (f"scontrol requeue {target} failed ({result.stderr.strip()}): submit the same command again "
                   "to continue (resume=auto)")


def requeued_already(target: str) -> bool:
    """Whether SLURM counts more restarts of the job than this run of it was started with (SLURM_RESTART_COUNT)."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", target], capture_output=True, text=True)
    found = re.search(r"\bRestarts=(\d+)", shown.stdout)
    return found is not None and int(found[1]) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)
