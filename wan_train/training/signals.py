"""Signals a SLURM job gets (the requeue warning, SIGTERM on preemption), recorded, never acted on in the handler.

Light on purpose (os and signal only): train.py installs it before its imports. What the run does with a
recorded signal is in wan_train.training.requeue.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


@dataclass
class _Received:
    signum: int | None = None
    installed: tuple[int, ...] = ()


_received = _Received()


def _record(signum, frame) -> None:
    if _received.signum is None or signum == signal.SIGTERM:  # SIGTERM (no requeue) wins over the warning
        _received.signum = signum


def install_early() -> None:
    """Before the config is known (train.py's first lines, inside a SLURM job): record SIGUSR1 and SIGTERM, so a
    warning that comes during the imports cannot kill the job. `install` then keeps or gives them back."""
    if "SLURM_JOB_ID" in os.environ:
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, _record)
        _received.installed = (signal.SIGUSR1, signal.SIGTERM)


def install(cluster) -> tuple[int, ...]:
    """Record (never act on) cluster.requeue_signal, and SIGTERM inside a SLURM job, from now on. Returns the
    signals taken over. With cluster.requeue off, signals taken early go back to their defaults, and one that
    came meanwhile is delivered again (it does what it would have done)."""
    wanted = []
    if cluster.requeue:
        wanted.append(getattr(signal, cluster.requeue_signal))
        if "SLURM_JOB_ID" in os.environ:
            wanted.append(signal.SIGTERM)
    for signum in set(_received.installed) - set(wanted):
        signal.signal(signum, signal.SIG_DFL)
    for signum in wanted:
        signal.signal(signum, _record)
    _received.installed = tuple(wanted)
    if _received.signum is not None and _received.signum not in wanted:
        signum, _received.signum = _received.signum, None
        os.kill(os.getpid(), signum)
    return _received.installed


def reinstall() -> None:
    """Take the signals back (Lightning composes its own SIGTERM handler, which stops training on its own terms,
    into every fit; its teardown restores ours)."""
    for signum in _received.installed:
        signal.signal(signum, _record)


def finished() -> None:
    """The run's work is done (exported, loggers finished): a requeue warning from now on has nothing left to
    save, so it is ignored until the process ends. Python gives caught signals back to their defaults while it
    shuts down, and SIGUSR1's default would kill the task and fail a job that completed. SIGTERM keeps its
    meaning (scancel, preemption)."""
    for signum in _received.installed:
        if signum != signal.SIGTERM:
            signal.signal(signum, signal.SIG_IGN)


def received() -> int | None:
    return _received.signum


def reset() -> None:
    _received.signum = None


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "none"
