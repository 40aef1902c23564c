"""What a new user sees while the README's commands run with their output in a file: progress lines on schedule,
no third-party noise, one-line errors before anything is made, and summaries that tell the truth after a resume
and on a finished run run again."""

import os
import re
import subprocess
import sys
import time

import pytest

from tests.smoke.slurm_run import ROOT, make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("first_hour_data"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The user's environment with W&B's own files in a temporary home (offline: no key)."""
    home = tmp_path_factory.mktemp("wandb_home")
    out = {**os.environ, "WANDB_DATA_DIR": str(home / "data"), "WANDB_CACHE_DIR": str(home / "cache"),
           "WANDB_CONFIG_DIR": str(home / "config")}
    for key in ("WANDB_API_KEY", "WANDB_MODE", "HYDRA_FULL_ERROR", "SLURM_JOB_ID"):
        out.pop(key, None)
    return out


def quickstart(shards, run_dir, env, *extra, steps=4) -> subprocess.CompletedProcess:
    """README's first command (recipe=quickstart: validation videos, W&B offline, CSV) on this test's small data,
    stdout and stderr into one file as `nohup` or a SLURM job would have them."""
    args = [f"run_dir={run_dir}", f"data.shards=[{shards / 'train'}]", f"data.val_shards=[{shards / 'val'}]",
            "data.durations=[0.5]", f"trainer.max_steps={steps}", "trainer.log_every_n_steps=2",
            "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2", "validation.every_n_steps=4",
            "validation.steps=2", "flow.held_out_samples=2", *extra]
    log = run_dir.parent / f"{run_dir.name}-{time.monotonic_ns()}.out"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "train.py", "recipe=quickstart", *args], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, text=True)
    done.stdout = log.read_text()
    return done


# every line the quickstart prints into a file: ours, and Lightning's two that say something about the run
EXPECTED = [
    r"\[[\d\-: ,]+\]\[wan_train[\w.]*\]\[(INFO|WARNING)\] - .*",  # our log lines (progress, videos, W&B folder)
    r"GPU available: (True|False), used: (True|False)",  # Lightning: whether a GPU is used
    r"(Restoring states from|Restored all states from) the checkpoint (path )?at .*",  # Lightning: the resume
    r"run folder: .*", r"  [\w/]+: [\d.]+ -> [\d.]+ \([+-][\d.]+%\)",  # train.py's summary
]


@pytest.mark.slow
def test_quickstart_into_a_file_prints_progress_lines_and_nothing_unexpected(shards, env, tmp_path):
    run_dir = tmp_path / "quick"
    done = quickstart(shards, run_dir, env)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = done.stdout.splitlines()
    unexpected = [line for line in lines if not any(re.fullmatch(p, line) for p in EXPECTED)]
    assert not unexpected, unexpected
    steps = [line.split(" - ", 1)[1] for line in lines if "[wan_train.progress]" in line]
    assert [s.split("  ")[0] for s in steps] == ["step 2/4", "step 4/4"]  # every trainer.log_every_n_steps
    assert re.fullmatch(r"step 4/4  loss \d+\.\d{4}  \d+\.\d\d s/step  \d+\.\d samples/s  0:00:00 left", steps[-1])
    assert "Epoch" not in done.stdout  # no progress bar drawn into the file
    log = (run_dir / "train.log").read_text()
    assert "step 2/4" in log and "step 4/4" in log and "validation videos of step 4" in log
    assert re.search(r"W&B run \w+ offline in .*offline-run-.* \(upload: wandb sync ", done.stdout)


@pytest.mark.slow
def test_a_resumed_run_and_a_finished_run_run_again_summarise_the_whole_run(shards, env, tmp_path):
    run_dir = tmp_path / "resumed"
    first = quickstart(shards, run_dir, env, "validation.every_n_steps=null", "logger.wandb=false", steps=2)
    assert first.returncode == 0, first.stdout[-3000:]
    start, end_2 = map(float, re.search(r"val/loss: ([\d.]+) -> ([\d.]+)", first.stdout).groups())
    resumed = quickstart(shards, run_dir, env, "validation.every_n_steps=null", "logger.wandb=false", steps=4)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "run folder: " in resumed.stdout and "step 4" in resumed.stdout
    whole = re.search(r"val/loss: ([\d.]+) -> ([\d.]+)", resumed.stdout).groups()
    assert float(whole[0]) == start and float(whole[1]) != end_2  # from the first segment's first loss
    again = quickstart(shards, run_dir, env, "validation.every_n_steps=null", "logger.wandb=false", steps=4)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "already finished at step 4 (trainer.max_steps=4): nothing trained" in again.stdout
    assert re.search(r"val/loss: ([\d.]+) -> ([\d.]+)", again.stdout).groups() == whole
    assert "nan" not in again.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step=0000002.ckpt", "step=0000004.ckpt"]
    assert (run_dir / "exported_step.txt").read_text() == "4\n" and (run_dir / "dit").is_dir()


@pytest.mark.slow  # each ~7 s: the imports of a training process (the keys themselves: tests/unit/test_config_keys.py)
@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["recipe=quickstart", "+unknown.key=1"], "error: +unknown.key=1: no such key"),
    ("train.py", ["recipe=quickstart", "+optim.lrr=1e-4"],
     "error: +optim.lrr=1e-4: no such key in optim (did you mean optim.lr?)"),
    ("train.py", ["recipe=quickstart", "optim.lrr=1e-4"],
     "error: optim.lrr=1e-4: no such key in optim (did you mean optim.lr?)"),
    ("train.py", ["recipe=quickstart", "data.shards=[/no/such/dir]"],
     "error: data.shards: /no/such/dir: no such file or folder"),
    ("train.py", ["recipe=quickstart", "resume=/no/such.ckpt"],
     "error: resume='/no/such.ckpt': expected 'auto', 'never' or an existing .ckpt file"),
    ("train.py", ["recipe=quickstart", "model.checkpoint=/no/such"],
     "error: model.checkpoint='/no/such': no such file or folder"),
    ("generate.py", ["ckpt=/no/such", "prompt=a fox"], "error: ckpt=/no/such: no such file or folder"),
    ("generate.py", ["ckpt=/no/such", "recipe=quickstart"], "error: recipe=quickstart: no such key"),
], ids=["added-key", "added-typo", "typo", "shards", "resume", "checkpoint", "generate-ckpt", "generate-key"])
def test_a_mistake_is_one_line_before_anything_is_made(script, args, message, env, tmp_path):
    run_dir = tmp_path / "never_made"
    began = time.monotonic()
    where = f"run_dir={run_dir}" if script == "train.py" else f"out={run_dir}/x.mp4"
    done = subprocess.run([sys.executable, str(ROOT / script), *args, where], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - began
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(message), done.stderr
    assert done.stdout == ""
    assert not run_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, anywhere
    assert seconds < 10, f"{seconds:.1f} s"


@pytest.mark.slow
def test_the_traceback_is_there_when_asked_for(env, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "recipe=quickstart", "data.shards=[/no/such/dir]",
                           f"run_dir={tmp_path / 'run'}"], cwd=tmp_path, env={**env, "HYDRA_FULL_ERROR": "1"},
                          capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert "ConfigError: data.shards: /no/such/dir: no such file or folder" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script, first", [("train.py", "Train a Wan DiT"), ("generate.py", "Generate videos")])
def test_help_starts_with_the_scripts_usage_and_examples(script, first):
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith(first)
    assert f"usage: python {script}" in done.stdout and "examples:" in done.stdout
    if script == "train.py":
        assert "  recipe: " in done.stdout and "quickstart" in done.stdout and "eval" not in done.stdout
    else:
        assert "recipe" not in done.stdout and "  ckpt: null" in done.stdout
