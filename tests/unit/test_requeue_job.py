"""requeue_job against a controller that times scontrol out: a request that took (the job's restart count went
up) is not asked for again and counts as done; one that did not take is tried again; one that never takes is
reported with scontrol's own words. scontrol here is a stand-in on PATH (a real controller cannot be made to time
out on cue); tests/smoke/test_slurm.py runs the real one."""

import os
import stat
from pathlib import Path

import pytest

from wan_train.training.requeue import requeue_job

SCONTROL = """#!/bin/sh
echo "$*" >> "{log}"
case "$1" in
requeue)
    n=$(cat "{calls}" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{calls}"
    if [ "$n" -ge "{succeed_at}" ]; then exit 0; fi
    if [ "{took}" = yes ]; then echo 1 > "{restarts}"; fi
    echo "slurm_requeue error: Socket timed out on send/recv operation" >&2; exit 1;;
show)
    echo "JobId=$3 JobName=train Restarts=$(cat "{restarts}" 2>/dev/null || echo 0) JobState=RUNNING";;
esac
"""


@pytest.fixture
def controller(tmp_path, monkeypatch):
    def make(*, took: bool, succeed_at: int = 99):
        script = tmp_path / "bin" / "scontrol"
        script.parent.mkdir(exist_ok=True)
        script.write_text(SCONTROL.format(log=tmp_path / "log", calls=tmp_path / "calls", restarts=tmp_path / "r",
                                          succeed_at=succeed_at, took="yes" if took else "no"))
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("SLURM_JOB_ID", "21")
        monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
        return tmp_path / "log"
    return make


def requeues(log: Path) -> int:
    return sum(line.startswith("requeue") for line in log.read_text().splitlines())


def test_a_requeue_that_took_despite_a_timeout_counts_as_done(controller):
    log = controller(took=True)
    done, said = requeue_job(pause=0)
    assert done and said == "job 21 requeued; it continues from there (resume=auto)"
    assert requeues(log) == 1


def test_a_restart_count_the_run_started_with_is_not_a_new_requeue(controller, monkeypatch):
    log = controller(took=True)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # this run is the requeued one already: Restarts=1 is old news
    done, said = requeue_job(pause=0)
    assert not done and requeues(log) == 3
    assert said == ("scontrol requeue 21 failed (slurm_requeue error: Socket timed out on send/recv operation): "
                    "submit the same command again to continue (resume=auto)")


def test_a_request_that_did_not_take_is_tried_again(controller):
    log = controller(took=False, succeed_at=2)
    done, _ = requeue_job(pause=0)
    assert done and requeues(log) == 2
