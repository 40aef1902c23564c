"""SLURM for real: slurm/submit and the sbatch templates on a one-machine cluster (tests/slurm_cluster.py:
slurmctld, four slurmd, munged), submitted from outside the repository. Two tasks, and two emulated nodes, train
exactly like one process with the doubled batch; a job stopped at any moment (time limit, a USR1 mid-run, during
start-up, during the final export, preemption by SIGTERM) ends COMPLETED after resuming, with the losses of the
uninterrupted run; Hydra's submitit launcher runs a training sweep on the CPU partition."""

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.smoke.slurm_run import ROOT, Job, make_shards, metrics, one_task, sbatch, submit, tail, train_args

SCRIPTS = sorted((ROOT / "slurm").glob("*.sbatch")) + [ROOT / "slurm" / "launch.sh", ROOT / "slurm" / "submit"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("slurm_data"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_keep_hyperparameters_out(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b(recipe|optim\.\w+|data\.\w+|max_steps|lr)=", code), f"{script.name} sets a hyperparameter"
    requests = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert not [r for r in requests if re.search(r"--(gpus|gres|ntasks|cpus-per-task|mem)", r)], "the run says that"


def readme_slurm_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run on a SLURM cluster", 1)[1].split("\n## ", 1)[0]
    text = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S)).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith(("slurm/submit", "sbatch"))]


def test_readme_slurm_commands_name_the_scripts_and_valid_overrides():
    from wan_train.config import compose_config
    from wan_train.parallel.slurm import train_allocation

    commands = readme_slurm_commands()
    assert len(commands) >= 3
    for command in commands:
        words = command.split()
        script = next(w for w in words if w.endswith(".sbatch"))
        assert (ROOT / script).is_file()
        overrides = [w for w in words[words.index(script) + 1:] if "=" in w and not w.startswith("$")]
        train_allocation(compose_config(overrides))  # every override names a real key; the allocation is known


def test_devices_that_do_not_match_the_tasks_fail_before_training(shards, tmp_path):
    """srun started 2 tasks per node, the command says trainer.devices=1: refused at start (Lightning alone
    would wait for a peer that never comes). The variables are srun's; no cluster needed."""
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1",
           "SLURM_PROCID": "0", "SLURM_JOB_NAME": "wan_train", "SLURM_NODELIST": "localhost"}
    bad = subprocess.run([sys.executable, "train.py", *train_args(shards, tmp_path / "bad"), "trainer.devices=1",
                          "cluster=slurm"], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    assert bad.returncode != 0
    assert ("trainer.devices=1 (1 per node), but slurm started 2 processes per node (--ntasks-per-node=2): set "
            "trainer.devices=2") in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


# ---- the templates on the cluster -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_process(shards, tmp_path_factory):
    """The reference: one plain process with batch 4."""
    run_dir = tmp_path_factory.mktemp("reference") / "one"
    done = one_task(shards, run_dir, **{"data.batch_size": "4"})
    assert done.returncode == 0, tail(done)
    return metrics(run_dir)


def assert_same_losses(got: dict, want: dict, *, rel: float) -> None:
    for key in ("train/loss", "val/loss"):
        assert sorted(got[key]) == sorted(want[key]), key
        for step, value in want[key].items():
            assert got[key][step] == pytest.approx(value, rel=rel), (key, step)


@pytest.mark.slow
def test_the_readme_cpu_command_trains_two_tasks_like_one_process(slurm_cluster, shards, one_process, tmp_path):
    """README's CPU-partition command as written (slurm/submit --partition=cpu slurm/train_single_node.sbatch
    recipe=quickstart trainer.devices=2 strategy=ddp run_dir=...), run from a folder outside the repository with
    this test's small data and 4 steps appended: 2 tasks x batch 2 (DDP over gloo) give one process's losses with
    batch 4; one summary, not one per rank; train.log has the step lines. The submitting shell holds a stale
    MASTER_ADDR / MASTER_PORT (sbatch exports it to the job): the job rendezvouses on its own node all the same."""
    command = next(c for c in readme_slurm_commands() if "--partition=cpu" in c).split()
    assert command[:4] == ["slurm/submit", "--partition=cpu", "slurm/train_single_node.sbatch", "recipe=quickstart"]
    run_dir = tmp_path / dict(w.split("=", 1) for w in command if "=" in w and not w.startswith("-"))["run_dir"]
    quick = [a for a in train_args(shards, run_dir, **{"data.batch_size": "2"})
             if not a.startswith(("run_dir=", "recipe="))]
    stale = {"MASTER_ADDR": "gpu017", "MASTER_PORT": "29500"}
    done = subprocess.run([str(ROOT / command[0]), "--parsable", command[1], str(ROOT / command[2]), *command[3:],
                           *quick], cwd=tmp_path, env={**slurm_cluster.env, "WAN_PYTHON": sys.executable, **stale},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    job = Job(slurm_cluster, int(done.stdout.strip()), tmp_path)
    info = job.wait()
    output = job.output
    assert info["JobState"] == "COMPLETED" and info["Partition"] == "cpu", output[-3000:]
    assert info["NumTasks"] == "2" and "gres" not in info.get("TresPerNode", "")
    rendezvous = re.search(r"1 node\(s\) x 2 task\(s\), rendezvous 127\.0\.0\.1:(\d+)", output)
    assert rendezvous and rendezvous[1] != "29500"
    assert output.count("run folder:") == 1
    assert_same_losses(metrics(run_dir), one_process, rel=2e-5)
    log = (run_dir / "train.log").read_text()
    assert all(f"step {s}/4  loss " in log for s in (1, 2, 3, 4))
    assert (run_dir / "dit").is_dir()


@pytest.mark.slow
def test_multi_node_template_on_two_nodes_trains_like_one_process(slurm_cluster, shards, one_process, tmp_path):
    """slurm/submit --partition=multi slurm/train_multi_node.sbatch trainer.num_nodes=2: one task on each of two
    emulated nodes (two slurmd), rendezvous on the first node: the same losses."""
    job = submit("train_multi_node.sbatch", shards, tmp_path / "nodes", cwd=tmp_path, sbatch=("--partition=multi",),
                 **{"trainer.num_nodes": "2", "trainer.devices": "1", "data.batch_size": "2", "strategy": "ddp"})
    info = job.wait()
    assert info["JobState"] == "COMPLETED", job.output[-3000:]
    assert info["NodeList"] == "n[1-2]" and "2 node(s) x 1 task(s)" in job.output
    assert_same_losses(metrics(tmp_path / "nodes"), one_process, rel=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_tasks_sharing_each_sample_train_like_one_task(slurm_cluster, shards, tmp_path, strategy):
    """strategy.sequence_parallel=2: both tasks hold half of every sample's tokens (Ulysses all-to-all in the
    DiT's self-attention) and read the same batches; the losses are those of one process with the whole sample.
    Under FSDP each task also holds half of every weight."""
    one = tmp_path / "one"
    assert one_task(shards, one, **{"data.batch_size": "2"}).returncode == 0
    done = sbatch(tmp_path, shards, tmp_path / "split", **{"data.batch_size": "2", "strategy": strategy,
                                                            "strategy.sequence_parallel": "2"})
    assert done.returncode == 0, tail(done)
    assert_same_losses(metrics(tmp_path / "split"), metrics(one), rel=1e-5)


# ---- a stop at any moment: requeue and preemption ---------------------------------------------------------------

STEPS = 12
LONG = {"trainer.max_steps": str(STEPS), "trainer.checkpoint_every_n_steps": "100", "data.batch_size": "2",
        "trainer.val_every_n_steps": "4"}


def until_stopped(job, run_dir: Path, step: str, signal_name: str = "USR1"):
    def act():
        job.wait_for(rf"step {step}/{STEPS} ", run_dir / "train.log")
        job.signal(signal_name)
    return act


def during_start_up(job, run_dir: Path):
    def act():  # launch.sh has started srun; train.py is importing torch and Lightning
        job.wait_for(r"job \d+ \(restart 0\)", Path(job.info["StdOut"]))
        time.sleep(2)
        job.signal("USR1")
    return act


def preempted(job, run_dir: Path):
    def act():  # an urgent job wants the only CPU of node n3: SLURM sends the low job SIGTERM and requeues it
        job.wait_for(rf"step 3/{STEPS} ", run_dir / "train.log")
        subprocess.run(["sbatch", "--partition=urgent", "--output=/dev/null", "--wrap=sleep 1"],
                       env=job.cluster.env, check=True, capture_output=True)
    return act


# name -> sbatch options, what the test does while the job runs, extra overrides
SCENARIOS = {
    # SLURM's own warning: --time=1 with USR1 50 s before the end (the controller checks every 30 s, so it comes
    # 10 to 40 s in: during start-up or training); the resumed job is then given time to finish
    "time_limit": (("--time=1", "--signal=USR1@50"), None, {}),
    # with a loader worker and W&B: the signal reaches every process of the job (the worker and its decoder too);
    # one CPU, so one thread like the reference (2 CPUs would be 2 threads: the same losses to ~1e-7 only)
    "usr1_mid_run": ((), lambda job, run_dir: until_stopped(job, run_dir, "3"),
                     {"logger.wandb": "true", "data.num_workers": "1", "cluster.cpus_per_task": "1"}),
    "usr1_during_start_up": ((), during_start_up, {}),
    "usr1_during_final_export": ((), lambda job, run_dir: until_stopped(job, run_dir, str(STEPS)), {}),
    "preemption": (("--partition=low",), preempted, {}),
}


@pytest.fixture(scope="module")
def stopped_jobs(slurm_cluster, shards, tmp_path_factory, wandb_home):
    """Every scenario's job, submitted at once and driven in its own thread, plus the uninterrupted reference."""
    root = tmp_path_factory.mktemp("requeue")

    def scenario(name):
        options, action, extra = SCENARIOS[name]
        run_dir = root / name
        job = submit("train_single_node.sbatch", shards, run_dir, cwd=root, sbatch=options, **LONG, **extra)
        if action is not None:
            action(job, run_dir)()

        def more_time(info):  # the resumed job of the time-limit scenario is not cut short again
            if name == "time_limit":
                job.cluster.scontrol("update", f"JobId={job.id}", "TimeLimit=10")
        start = time.time()
        info = job.wait(timeout=400, on_restart=more_time)
        return {"info": info, "output": job.output, "run_dir": run_dir, "seconds": time.time() - start}

    with ThreadPoolExecutor(len(SCENARIOS) + 1) as pool:
        # with the threads of a one-CPU task: then every loss is equal to the last bit
        reference = pool.submit(one_task, shards, root / "uninterrupted", threads=1, **LONG)
        futures = {name: pool.submit(scenario, name) for name in SCENARIOS}
        done = reference.result()
        assert done.returncode == 0, tail(done)
        return {"reference": metrics(root / "uninterrupted"), **{n: f.result() for n, f in futures.items()}}


@pytest.fixture(scope="module")
def wandb_home(tmp_path_factory, monkeypatch_module):
    home = tmp_path_factory.mktemp("wandb_home")
    for key, sub in (("WANDB_MODE", None), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config")):
        monkeypatch_module.setenv(key, "offline" if sub is None else str(home / sub))
    monkeypatch_module.delenv("WANDB_API_KEY", raising=False)
    return home


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_stopped_job_completes_after_resuming_with_the_uninterrupted_losses(stopped_jobs, name):
    result = stopped_jobs[name]
    info, output, run_dir = result["info"], result["output"], result["run_dir"]
    assert info["JobState"] == "COMPLETED", output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert (run_dir / "dit").is_dir()
    got, want = metrics(run_dir), stopped_jobs["reference"]
    assert got["train/loss"] == want["train/loss"] and got["val/loss"] == want["val/loss"]
    stops = re.findall(r"stopped by (SIGUSR1|SIGTERM)[^:]* at step (\d+)", output)
    if name == "usr1_during_final_export" and not stops:
        # the signal came after the safe point before the export: the export finished, nothing was left to resume
        assert int(info["Restarts"]) == 0
        return
    assert int(info["Restarts"]) == len(stops) >= 1, output[-4000:]
    signal_name, step = stops[0]
    assert signal_name == ("SIGTERM" if name == "preemption" else "SIGUSR1")
    if name == "usr1_during_start_up":
        assert step == "0" and "step 1/" not in output.split("stopped by")[0]
    if name == "usr1_mid_run":
        assert 3 <= int(step) < STEPS
        assert (run_dir / "checkpoints" / f"step={int(step):07d}.ckpt").is_file()
        # one W&B run continued by the requeued job: two offline segments with the same run id, both finished
        ids = {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2 and ids == {
            (run_dir / "wandb_run_id.txt").read_text().strip()}
        assert len(re.findall(r"W&B run \w+ offline in .*offline-run-", output)) == 2  # each segment finished it
    if name == "usr1_during_final_export":
        assert step == str(STEPS)


# ---- sweeps through Hydra's submitit launcher -------------------------------------------------------------------

@pytest.mark.slow
def test_a_training_sweep_runs_on_the_cpu_partition(slurm_cluster, shards, tmp_path):
    """python train.py -m hydra/launcher=slurm hydra.launcher.partition=cpu optim.lr=A,B 'run_dir=...${optim.lr}':
    one job per combination, asking for no GPU (trainer.accelerator=cpu) and data.num_workers + 1 CPUs; each
    trains and exports into its own run folder; the sweep's files go under runs/multirun/, not the repository."""
    args = train_args(shards, "x", **{"trainer.max_steps": "2", "trainer.val_every_n_steps": "2"})
    args = [a for a in args if not a.startswith("run_dir=")]
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
                           "hydra.launcher.partition=cpu", *args, "optim.lr=1e-4,3e-4",
                           f"run_dir={tmp_path}/lr${{optim.lr}}"], cwd=tmp_path, env=slurm_cluster.env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, tail(done)
    for lr in ("0.0001", "0.0003"):
        assert (tmp_path / f"lr{lr}" / "dit").is_dir() and metrics(tmp_path / f"lr{lr}")["train/loss"]
    script = next((tmp_path / "runs" / "multirun").glob("*/submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --cpus-per-task=1\n" in script and "gpus" not in script
    assert not (ROOT / "multirun").exists()
