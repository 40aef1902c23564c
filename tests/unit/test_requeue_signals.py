"""wan_train.training.signals: in a SLURM job the requeue warning and SIGTERM are recorded from train.py's first
lines, never acted on in the handler; with cluster.requeue off they go back to their defaults, and one that came
meanwhile does what it would have done. Each case runs in its own process (signal handlers are per process)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import os, signal, time
from types import SimpleNamespace
from wan_train.training import signals
"""


def run(code: str, *, slurm: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    if slurm:
        env["SLURM_JOB_ID"] = "42"
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_warning_during_start_up_is_recorded_not_fatal():
    done = run("""
        signals.install_early()
        os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's --signal=USR1@N, up to a minute early
        time.sleep(0.1)
        signals.install(SimpleNamespace(requeue=True, requeue_signal="SIGUSR1"))
        os.kill(os.getpid(), signal.SIGTERM)  # preemption: wins over the warning (no scontrol requeue)
        time.sleep(0.1)
        print(signals.signal_name(signals.received()))
    """, slurm=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SIGTERM"


def test_without_requeue_a_signal_that_came_early_does_what_it_would_have_done():
    done = run("""
        signals.install_early()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        print("alive", flush=True)
        signals.install(SimpleNamespace(requeue=False, requeue_signal="SIGUSR1"))
        time.sleep(1)
        print("not reached")
    """, slurm=True)
    assert done.stdout.strip() == "alive"
    assert done.returncode == -signal.SIGUSR1


@pytest.mark.parametrize("slurm", [True, False])
def test_sigterm_is_taken_only_inside_a_slurm_job(slurm):
    done = run("""
        installed = signals.install(SimpleNamespace(requeue=True, requeue_signal="SIGUSR2"))
        print(sorted(signal.Signals(s).name for s in installed), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        print(signals.signal_name(signals.received()))
    """, slurm=slurm)
    if slurm:
        assert done.returncode == 0 and done.stdout.split("\n")[:2] == ["['SIGTERM', 'SIGUSR2']", "SIGTERM"]
    else:  # a local run: Ctrl-C and kill keep their meaning
        assert done.returncode == -signal.SIGTERM and done.stdout.strip() == "['SIGUSR2']"


@pytest.mark.parametrize("finished", [True, False])
def test_a_warning_after_the_work_is_done_cannot_kill_the_task(finished):
    """The export is written; SIGUSR1 comes while the process ends. Python's shutdown gives caught signals back
    to their defaults, as exec does: the shell exec'd here stands for that moment, and SIGUSR1 kills it unless
    `signals.finished()` ignored the warning (an ignored signal stays ignored across exec)."""
    done = run(f"""
        signals.install_early()
        signals.install(SimpleNamespace(requeue=True, requeue_signal="SIGUSR1"))
        if {finished}:
            signals.finished()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN  # scancel and preemption keep their meaning
        os.execv("/bin/sh", ["sh", "-c", "kill -USR1 $$; echo alive"])
    """, slurm=True)
    if finished:
        assert done.returncode == 0 and done.stdout.strip() == "alive", done.stderr
    else:
        assert done.returncode == -signal.SIGUSR1 and done.stdout == ""
