"""A real one-machine SLURM cluster for the tests: munged, slurmctld and three slurmd (`slurmd -N`, each on its own
port) started from Debian's slurm-wlm with a config in a temporary folder, and stopped by their own process ids.

  node n0: 6 CPUs (more than this machine may have: jobs share its cores), partition `cpu` (the default)
  nodes n1, n2: 1 CPU each, partition `multi` (two emulated nodes for the multi-node template)
  node n3: 1 CPU, partitions `low` and `urgent`: an `urgent` job preempts a `low` one (PriorityTier,
           PreemptMode=REQUEUE, SLURM's default SIGTERM then SIGKILL after KillWait)

`python -m tests.slurm_cluster [FOLDER]` starts one by hand and prints the SLURM_CONF to export; Ctrl-C stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")
NODES = {"n0": 6, "n1": 1, "n2": 1, "n3": 1}  # name -> CPUs
REQUEUE_DELAY = 3.0  # seconds a requeued job waits in the tests (SLURM: 120)


class ClusterUnavailable(RuntimeError):
    """SLURM is not installed here, or its daemons would not start (the reason is the message)."""


def missing_programs() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Cluster:
    root: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    active: ClassVar[Cluster | None] = None  # the session's cluster (tests/conftest.py: slurm_cluster)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with SLURM_CONF pointing at the cluster (sbatch passes it on to jobs)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        return {**clean, "SLURM_CONF": str(self.conf)}

    # ---- starting and stopping -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Cluster:
        if os.geteuid() != 0:
            raise ClusterUnavailable("slurmd must run as root to start jobs (this is uid %d)" % os.geteuid())
        if missing := missing_programs():
            raise ClusterUnavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        self._write_conf()
        log = self.root / "log"
        self._spawn("munged", [_program("munged"), "-F", "--force", f"--socket={self.root / 'munge.socket'}",
                               f"--key-file={key}", f"--pid-file={self.root / 'munged.pid'}",
                               f"--log-file={log / 'munged.log'}", f"--seed-file={self.root / 'munged.seed'}"])
        self._wait_for(lambda: (self.root / "munge.socket").exists(), timeout, "munged")
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait_for(lambda: "UP" in self.scontrol("ping").stdout, timeout, "slurmctld")
        for node in NODES:
            self._spawn(f"slurmd-{node}", [_program("slurmd"), "-D", "-N", node, "-f", str(self.conf)])
        self._wait_for(self._nodes_idle, timeout, "slurmd")
        return self

    def stop(self) -> None:
        """Cancel every job, wait for their processes to go, then stop the daemons this object started."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--quiet", "--user", str(os.geteuid())], env=self.env,
                           capture_output=True, timeout=30)
            deadline = time.time() + 30
            while time.time() < deadline and self.squeue():
                time.sleep(0.5)
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def _spawn(self, name: str, command: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        out.close()

    def _wait_for(self, ready, timeout: float, name: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for daemon, process in self.processes.items():
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{daemon} exited with {process.returncode}: {self.log_tail(daemon)}")
            if ready():
                return
            time.sleep(0.2)
        raise ClusterUnavailable(f"{name} not ready after {timeout:.0f} s: {self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 5) -> str:
        texts = []
        for path in sorted((self.root / "log").glob(f"{name.split('-')[0]}*")):
            texts += path.read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(texts)

    def _nodes_idle(self) -> bool:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True)
        states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        return set(NODES) <= set(states) and all(states[n].startswith("idle") for n in NODES)

    def _write_conf(self) -> None:
        ctld, *ports = _free_ports(1 + len(NODES))
        host = socket.gethostname().split(".")[0]
        memory = 8192
        nodes = "\n".join(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} "
                          f"RealMemory={memory} State=UNKNOWN" for (name, cpus), port in zip(NODES.items(), ports))
        root = self.root
        self.conf.write_text(f"""\
ClusterName=wantest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
JobRequeue=1
ReturnToService=2
MinJobAge=3600
KillWait=30
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
{nodes}
PartitionName=cpu Nodes=n0 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=multi Nodes=n1,n2 MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=low Nodes=n3 MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=n3 MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
""")

    # ---- using it --------------------------------------------------------------------------------------------

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True)

    def squeue(self) -> list[str]:
        done = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
        return done.stdout.split()

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> int:
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)}: {done.stderr.strip()}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, Restarts, ExitCode, StdOut, ...)."""
        done = self.scontrol("show", "job", "-o", str(job_id))
        out = {}
        for word in done.stdout.split():
            key, _, value = word.partition("=")
            out.setdefault(key, value)
        return out

    def wait(self, job_id: int, *, timeout: float = 300, on_restart=None,
             done=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL"),
             shorten_requeue_delay: bool = True) -> dict[str, str]:
        """Wait until the job ends in one of `done`. A requeued job waits for its BeginTime (SLURM holds it for
        the credential lifetime, 2 minutes by default): with shorten_requeue_delay it is started after
        REQUEUE_DELAY seconds instead (not at once: the requeue revoked the old start's credential, and a start
        within the same second is refused as "Job credential revoked", which fails the job).
        on_restart(info) runs once each time the job's restart count grows."""
        deadline, restarts, pending_since = time.time() + timeout, 0, None
        while time.time() < deadline:
            info = self.job(job_id)
            state = info.get("JobState")
            if state in done:
                return info
            if on_restart is not None and int(info.get("Restarts", 0)) > restarts:
                restarts = int(info["Restarts"])
                on_restart(info)
            if shorten_requeue_delay and state == "PENDING" and info.get("Reason") == "BeginTime":
                pending_since = pending_since or time.time()
                if time.time() - pending_since >= REQUEUE_DELAY:
                    self.scontrol("update", f"JobId={job_id}", "StartTime=now")
                    pending_since = None
            else:
                pending_since = None
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout:.0f} s")

    def wait_state(self, job_id: int, state: str, *, timeout: float = 120) -> dict[str, str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") == state:
                return info
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} not {state} after {timeout:.0f} s (it is {self.job(job_id)})")


def main() -> None:
    import sys
    import tempfile

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="slurm_"))
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or kill PID stop it (even started in the background)
        signal.signal(signum, signal.default_int_handler)
    cluster = Cluster(root)
    try:
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C stops the cluster", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
