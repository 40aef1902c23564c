"""Running train.py the way SLURM starts it: slurm/submit and slurm/*.sbatch on the real one-machine cluster of
tests/slurm_cluster.py (the `slurm_cluster` fixture), and one plain process for reference."""

import csv
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data_tools.make_demo import make_demo
from tests.slurm_cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]


def make_shards(root: Path) -> Path:
    make_demo(root / "train", num_clips=16, seed=0, width=256, height=144, frames=17, fps=16.0, shard_size=16)
    make_demo(root / "val", num_clips=2, seed=1, width=256, height=144, frames=17, fps=16.0, shard_size=2)
    return root


def train_args(shards, run_dir, **overrides) -> list[str]:
    # one shard read by every task, which keeps every 2nd sample; no shuffle buffer and one bucket (portrait clips
    # are cropped to 16:9): the global batch of step s is the same 4 clips on 2 tasks x 2 as on 1 task x 4
    values = {"recipe": "quickstart", "run_dir": str(run_dir), "data.shards": f"[{shards / 'train'}]",
              "data.val_shards": f"[{shards / 'val'}]", "data.durations": "[0.5]", "data.aspect_ratios": "[16:9]",
              "data.resolutions": "[144p]",  # the clips' own size: steps long enough for a stop mid-run
              "data.num_workers": "0", "data.shuffle_buffer": "1", "trainer.max_steps": "4",
              "trainer.val_every_n_steps": "2", "trainer.checkpoint_every_n_steps": "2",
              "trainer.log_every_n_steps": "1",
              "trainer.enable_progress_bar": "false", "flow.held_out_samples": "2", "flow.held_out_quantiles": "2",
              "validation.every_n_steps": "null", "logger.wandb": "false", **overrides}
    return [f"{k}={v}" for k, v in values.items()]


def metrics(run_dir) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for path in sorted(Path(run_dir).glob("csv/version_*/metrics.csv")):
        with path.open() as file:
            for row in csv.DictReader(file):
                for key in ("train/loss", "val/loss"):
                    if row.get(key):
                        out.setdefault(key, {})[int(row["step"])] = float(row[key])
    return out


def one_task(shards, run_dir, *, threads: int | None = None, **overrides) -> subprocess.CompletedProcess:
    """python train.py ... in this process's environment (no launcher); `threads` sets OMP_NUM_THREADS (a SLURM
    task runs with one per CPU it was given: slurm/clusters/default.env)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.run([sys.executable, "train.py", *train_args(shards, run_dir, **overrides)], cwd=ROOT,
                          capture_output=True, text=True, env=env)


@dataclass
class Job:
    """A submitted job of the session's cluster."""

    cluster: Cluster
    id: int
    cwd: Path

    @property
    def info(self) -> dict[str, str]:
        return self.cluster.job(self.id)

    @property
    def output(self) -> str:
        path = Path(self.info.get("StdOut") or self.cwd / f"wan_train-{self.id}.out")
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait(self, *, timeout: float = 300, on_restart=None) -> dict[str, str]:
        return self.cluster.wait(self.id, timeout=timeout, on_restart=on_restart)

    def wait_for(self, pattern: str, path: Path, *, timeout: float = 180) -> None:
        """Until `pattern` (a regex) appears in the text file `path` (train.log, the job's output)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.is_file() and re.search(pattern, path.read_text(errors="replace")):
                return
            if self.info.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING"):
                raise AssertionError(f"job {self.id} is {self.info.get('JobState')} before {pattern!r}: "
                                     f"{self.output[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"no {pattern!r} in {path} after {timeout:.0f} s")

    def signal(self, name: str) -> None:
        """scancel --signal=NAME: to every task of the job's steps (as --signal=NAME@N does), not the batch shell."""
        subprocess.run(["scancel", f"--signal={name}", str(self.id)], env=self.cluster.env, check=True)


def submit(template: str, shards, run_dir, *, sbatch: tuple[str, ...] = (), cwd: Path | None = None,
           **overrides) -> Job:
    """slurm/submit [sbatch options] slurm/TEMPLATE ... on the session's cluster, from `cwd` (outside the
    repository); returns the job."""
    cluster = Cluster.active
    assert cluster is not None, "needs the slurm_cluster fixture"
    cwd = Path(cwd or Path(run_dir).parent)
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(ROOT / "slurm" / "submit"), "--parsable", *sbatch, str(ROOT / "slurm" / template),
                           *train_args(shards, run_dir, **overrides)], cwd=cwd,
                          env={**cluster.env, "WAN_PYTHON": sys.executable}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return Job(cluster, int(done.stdout.strip().split(";")[0]), cwd)


def sbatch(tmp_path, shards, run_dir, *, ntasks: int = 2, **overrides) -> subprocess.CompletedProcess:
    """slurm/submit slurm/train_single_node.sbatch ... with trainer.devices=ntasks, waited for: the job's output
    as stdout and 0 for a COMPLETED job."""
    job = submit("train_single_node.sbatch", shards, run_dir, cwd=tmp_path, **{"trainer.devices": str(ntasks)},
                 **overrides)
    info = job.wait()
    code = 0 if info["JobState"] == "COMPLETED" else int(info.get("ExitCode", "1:0").split(":")[0]) or 1
    return subprocess.CompletedProcess(["sbatch"], code, job.output, f"job {job.id}: {info.get('JobState')}")


def tail(done: subprocess.CompletedProcess) -> str:
    return done.stdout[-3000:] + done.stderr[-3000:]
