"""SLURM on one CPU machine: slurm/*.sbatch run for real with stand-ins for the scheduler's srun and scontrol
(tests/fake_slurm/), which start one `python train.py` per task with the variables srun sets. Two tasks over gloo
train exactly like one process with the doubled batch; the requeue signal checkpoints, requeues and resumes."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.smoke.slurm_run import FAKE_SLURM, ROOT, make_shards, metrics, slurm_env, train_args

SCRIPTS = sorted((ROOT / "slurm").glob("*.sbatch")) + [ROOT / "slurm" / "launch.sh"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("slurm_data"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_keep_hyperparameters_out(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b(recipe|optim\.\w+|data\.\w+|max_steps|lr)=", code), f"{script.name} sets a hyperparameter"


def readme_slurm_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run on a SLURM cluster", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()
            if line.strip().startswith("sbatch")]


def test_readme_slurm_commands_name_the_scripts_and_valid_overrides():
    from wan_train.config import compose_config

    commands = readme_slurm_commands()
    assert len(commands) >= 2
    for command in commands:
        words = command.split()
        script = next(w for w in words if w.endswith(".sbatch"))
        assert (ROOT / script).is_file()
        overrides = [w for w in words[words.index(script) + 1:] if "=" in w and not w.startswith("$")]
        compose_config(overrides)  # every override names a real key or group


def test_two_tasks_train_exactly_like_one_task_with_the_doubled_batch(shards, tmp_path):
    """sbatch --ntasks-per-node=2 slurm/train_single_node.sbatch ... (gloo) vs one process with batch 4: the
    same held-out loss after each logged step (the same weights) and the same global training loss."""
    one = tmp_path / "one"
    subprocess.run([sys.executable, "train.py", *train_args(shards, one, **{"data.batch_size": "4"})], cwd=ROOT,
                   check=True, capture_output=True)
    two = tmp_path / "two"
    done = subprocess.run(["bash", "slurm/train_single_node.sbatch", *train_args(shards, two, **{
        "data.batch_size": "2", "strategy": "ddp"})], cwd=ROOT, env=slurm_env(tmp_path, ntasks=2),
        capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 node(s) x 2 task(s)" in done.stdout
    single, ddp = metrics(one), metrics(two)
    assert sorted(ddp["train/loss"]) == [0, 1, 2, 3] and sorted(ddp["val/loss"]) == [0, 2, 4]
    for key in ("train/loss", "val/loss"):
        for step, value in single[key].items():
            assert ddp[key][step] == pytest.approx(value, rel=2e-5), (key, step)
    assert (two / "checkpoints" / "step=0000004.ckpt").is_file() and (two / "dit").is_dir()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_tasks_sharing_each_sample_train_like_one_task(shards, tmp_path, strategy):
    """strategy.sequence_parallel=2: both tasks hold half of every sample's tokens (Ulysses all-to-all in the
    DiT's self-attention) and read the same batches; the losses are those of one process with the whole sample.
    Under FSDP each task also holds half of every weight."""
    one = tmp_path / "one"
    subprocess.run([sys.executable, "train.py", *train_args(shards, one, **{"data.batch_size": "2"})], cwd=ROOT,
                   check=True, capture_output=True)
    split = tmp_path / "split"
    done = subprocess.run(["bash", "slurm/train_single_node.sbatch", *train_args(shards, split, **{
        "data.batch_size": "2", "strategy": strategy, "strategy.sequence_parallel": "2"})], cwd=ROOT,
        env=slurm_env(tmp_path, ntasks=2), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    single, parallel = metrics(one), metrics(split)
    assert sorted(parallel["train/loss"]) == [0, 1, 2, 3]
    for key in ("train/loss", "val/loss"):
        for step, value in single[key].items():
            assert parallel[key][step] == pytest.approx(value, rel=1e-5), (key, step)


def test_devices_that_do_not_match_the_tasks_fail_before_training(shards, tmp_path):
    """srun started 2 tasks per node, the command says trainer.devices=1: refused at start (Lightning alone
    would wait for a peer that never comes)."""
    bad = subprocess.run([sys.executable, "train.py", *train_args(shards, tmp_path / "bad"), "trainer.devices=1",
                          "cluster=slurm"], cwd=ROOT, env={**slurm_env(tmp_path, ntasks=2), "SLURM_PROCID": "0"},
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert ("trainer.devices=1 (1 per node), but slurm started 2 processes per node (--ntasks-per-node=2): set "
            "trainer.devices=2") in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_requeue_signal_checkpoints_requeues_and_the_next_job_resumes(shards, tmp_path):
    """SIGUSR1 (sbatch --signal=USR1@180) mid-run: the run saves the current step, calls scontrol requeue with
    its job id and exits without exporting; the same command then resumes and ends with the uninterrupted
    run's losses."""
    full = tmp_path / "full"
    args = {"trainer.max_steps": "10", "trainer.checkpoint_every_n_steps": "100", "data.batch_size": "2"}
    subprocess.run([sys.executable, "train.py", *train_args(shards, full, **args)], cwd=ROOT, check=True,
                   capture_output=True)
    run_dir = tmp_path / "requeued"
    command = [sys.executable, "train.py", *train_args(shards, run_dir, **args), "cluster=slurm"]
    env = {**os.environ, "PATH": f"{FAKE_SLURM}:{os.environ['PATH']}", "SLURM_JOB_ID": "777",
           "FAKE_SCONTROL_LOG": str(tmp_path / "scontrol")}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while 3 not in metrics(run_dir).get("train/loss", {}) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    saved = sorted((run_dir / "checkpoints").glob("step=*.ckpt"))
    assert len(saved) == 1 and 3 <= int(saved[0].stem.split("=")[1]) < 10  # the step it was at, not a schedule
    assert (tmp_path / "scontrol").read_text() == "requeue 777\n"
    assert not (run_dir / "dit").exists()  # not finished: nothing exported
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    assert metrics(run_dir)["train/loss"] == metrics(full)["train/loss"]
    assert (run_dir / "dit").is_dir()
