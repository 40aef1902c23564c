"""Running train.py the way SLURM starts it, on one CPU machine: slurm/*.sbatch with stand-ins for srun and
scontrol (tests/fake_slurm/), which start one `python train.py` per task with the variables srun sets."""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

from data_tools.make_demo import make_demo

ROOT = Path(__file__).resolve().parents[2]
FAKE_SLURM = ROOT / "tests" / "fake_slurm"


def make_shards(root: Path) -> Path:
    make_demo(root / "train", num_clips=16, seed=0, width=256, height=144, frames=17, fps=16.0, shard_size=16)
    make_demo(root / "val", num_clips=2, seed=1, width=256, height=144, frames=17, fps=16.0, shard_size=2)
    return root


def train_args(shards, run_dir, **overrides) -> list[str]:
    # one shard read by every task, which keeps every 2nd sample; no shuffle buffer and one bucket (portrait clips
    # are cropped to 16:9): the global batch of step s is the same 4 clips on 2 tasks x 2 as on 1 task x 4
    values = {"recipe": "quickstart", "run_dir": str(run_dir), "data.shards": f"[{shards / 'train'}]",
              "data.val_shards": f"[{shards / 'val'}]", "data.durations": "[0.5]", "data.aspect_ratios": "[16:9]",
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


def slurm_env(tmp_path, *, ntasks: int) -> dict:
    """The variables an `sbatch --ntasks-per-node=N` job sees, on this host, with the stand-ins first on PATH."""
    port = free_port_above(15000)  # Lightning's SLURM rendezvous port is 15000 + the job id's last 4 digits
    return {**os.environ, "PATH": f"{FAKE_SLURM}:{os.environ['PATH']}", "SLURM_JOB_ID": str(port - 15000),
            "SLURM_JOB_NAME": "wan_train", "SLURM_NTASKS": str(ntasks), "SLURM_NTASKS_PER_NODE": str(ntasks),
            "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(ROOT),
            "SLURM_CPUS_PER_TASK": "1", "WAN_PYTHON": sys.executable, "FAKE_SCONTROL_LOG": str(tmp_path / "scontrol")}


def free_port_above(low: int) -> int:
    for port in range(low + 1000 + os.getpid() % 7000, low + 9999):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def one_task(shards, run_dir, **overrides) -> subprocess.CompletedProcess:
    """python train.py ... in this process's environment (no launcher)."""
    return subprocess.run([sys.executable, "train.py", *train_args(shards, run_dir, **overrides)], cwd=ROOT,
                          capture_output=True, text=True)


def sbatch(tmp_path, shards, run_dir, *, ntasks: int = 2, **overrides) -> subprocess.CompletedProcess:
    """bash slurm/train_single_node.sbatch ... as a job of `ntasks` tasks on this host."""
    return subprocess.run(["bash", "slurm/train_single_node.sbatch", *train_args(shards, run_dir, **overrides)],
                          cwd=ROOT, env=slurm_env(tmp_path, ntasks=ntasks), capture_output=True, text=True)


def tail(done: subprocess.CompletedProcess) -> str:
    return done.stdout[-3000:] + done.stderr[-3000:]
