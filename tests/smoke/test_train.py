"""train.py's run(cfg) end to end on the CPU with the quickstart's zero-download setup: a 2-step run writes
the run folder (config, git revision, checkpoints, CSV and W&B-offline metrics, exported weights), and a run
stopped after step k and resumed with resume=auto reproduces the uninterrupted run's losses exactly (from the
checkpoint before a damaged newest one too); a crafted resume= file is refused before its code runs."""

import csv
import json
import logging
import re
import shutil
import time

import pytest
import torch

from data_tools.make_demo import make_demo
from eval import layout_guess, prompt_match
from tests.helpers import Payload
from wan_train.config import compose_config
from wan_train.models import CheckpointError, load_dit
from wan_train.models.checkpoint.pickles import load_pickled
from wan_train.training.run import run


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo(root / "train", num_clips=8, seed=0, width=256, height=144, frames=17, fps=16.0, shard_size=4)
    make_demo(root / "val", num_clips=2, seed=1, width=256, height=144, frames=17, fps=16.0, shard_size=2)
    return root


def config(demo, run_dir, **overrides):
    values = {"data.shards": f"[{demo / 'train'}]", "data.val_shards": f"[{demo / 'val'}]",
              "data.durations": "[0.5]", "run_dir": str(run_dir), "trainer.enable_progress_bar": "false",
              "trainer.val_every_n_steps": "2", "trainer.checkpoint_every_n_steps": "3",
              "trainer.log_every_n_steps": "1", "flow.held_out_samples": "2", "flow.held_out_quantiles": "2",
              "validation.every_n_steps": "null"}
    values.update(overrides)
    return compose_config(["recipe=quickstart", *(f"{k}={v}" for k, v in values.items())])


def losses(run_dir) -> dict[int, float]:
    out = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as file:
            for row in csv.DictReader(file):
                if row.get("train/loss"):
                    out[int(row["step"])] = float(row["train/loss"])
    return out


def test_two_step_run_writes_the_run_folder(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    metrics = run(config(demo, tmp_path / "run", **{"trainer.max_steps": "2", "trainer.ema_decay": "0.5"}))
    run_dir = tmp_path / "run"
    assert metrics["step"] == 2 and metrics["val/loss"] == metrics["val/loss"]  # not NaN
    assert (run_dir / "config.yaml").read_text().count("quickstart") >= 1
    assert (run_dir / "git_revision.txt").read_text().strip()
    assert (run_dir / "checkpoints" / "step=0000002.ckpt").is_file()
    assert sorted(losses(run_dir)) == [0, 1]
    # a W&B offline run folder (syncable later with `wandb sync`) whose records hold the run's metrics
    records = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(records) == 1
    deadline = time.time() + 60  # W&B's service process may still be flushing the record file after finish()
    while b"val/loss" not in (data := records[0].read_bytes()) and time.time() < deadline:
        time.sleep(0.2)
    assert b"train/loss" in data and b"val/loss" in data
    # the exported weights load back with load_dit
    dit, ema = load_dit(run_dir / "dit"), load_dit(run_dir / "dit_ema")
    assert dit.config.in_dim == 12
    assert not torch.equal(dit.blocks[0].ffn[0].weight, ema.blocks[0].ffn[0].weight)  # EMA lags the weights


def test_prompt_match_scores_a_runs_own_videos_against_held_out_captions(demo, tmp_path, capsys):
    run(config(demo, tmp_path / "run", **{"trainer.max_steps": "1", "logger.wandb": "false"}))
    out = tmp_path / "scores.json"
    assert prompt_match.main(["--runs", f"one={tmp_path / 'run'}", "--shards", str(demo / "val"), "--count", "2",
                              "--steps", "2", "--frames", "17", "--output", str(out),
                              "--save", str(tmp_path / "videos")]) == 0
    table = capsys.readouterr().out
    assert "| held-out clips | 1.00 | 1.00 | 1.00 |" in table and "| one |" in table
    scores = json.loads(out.read_text())
    assert [row["seed"] for row in scores["one"]["per_clip"]] == [0, 1] and scores["one"]["clips"] == 2
    assert sorted(p.name for p in (tmp_path / "videos" / "one").glob("*.mp4")) == ["clip_00.mp4", "clip_01.mp4"]


def test_prompt_match_from_a_first_frame_on_a_ti2v_run(demo, tmp_path, capsys):
    run(config(demo, tmp_path / "ti2v", model="quickstart_ti2v", **{"trainer.max_steps": "1",
                                                                    "logger.wandb": "false"}))
    clips = prompt_match.held_out([str(demo / "val")], 2, frames=17, stride=16)
    overrides = {"steps": 2, "num_frames": 17}
    scores = {mode: prompt_match.score_run(tmp_path / "ti2v", clips, seed=0, overrides=overrides, first_frame=mode)
              for mode in ("none", "clip", "generated")}
    # from the clip's own first frame, that frame is drawn exactly: its shape counts in the frame mean of form
    assert scores["clip"]["form"] > 0.03 > scores["none"]["form"]
    assert scores["generated"]["clips"] == 2 and scores["generated"]["form"] < 0.03  # its own frame: noise
    assert prompt_match.main(["--runs", f"one={tmp_path / 'ti2v'}", "--shards", str(demo / "val"), "--count", "1",
                              "--steps", "2", "--frames", "17", "--first-frame", "clip"]) == 0
    assert "| one |" in capsys.readouterr().out
    run(config(demo, tmp_path / "t2v", **{"trainer.max_steps": "1", "logger.wandb": "false"}))
    with pytest.raises(ValueError, match="--first-frame clip needs a TI2V model"):
        prompt_match.score_run(tmp_path / "t2v", clips, seed=0, overrides=overrides, first_frame="clip")


def test_layout_guess_scores_a_runs_estimate_from_pure_noise_against_held_out_captions(demo, tmp_path, capsys):
    run(config(demo, tmp_path / "run", **{"trainer.max_steps": "1", "logger.wandb": "false"}))
    out = tmp_path / "guess.json"
    assert layout_guess.main(["--runs", f"one={tmp_path / 'run'}", "--shards", str(demo / "val"), "--count", "2",
                              "--noises", "3", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| held-out clips | +" in table and "| one |" in table
    scores = json.loads(out.read_text())
    assert [row["key"] for row in scores["one"]["per_clip"]] == [row["key"] for row in
                                                                 scores["held-out clips"]["per_clip"]]
    assert scores["one"]["clips"] == 2 and scores["held-out clips"]["along"] > 0.2


def test_stopped_after_step_k_and_resumed_reproduces_the_losses_exactly(demo, tmp_path):
    common = {"logger.wandb": "false"}
    run(config(demo, tmp_path / "full", **common, **{"trainer.max_steps": "6"}))
    run(config(demo, tmp_path / "resumed", **common, **{"trainer.max_steps": "3"}))  # stops after step 3
    metrics = run(config(demo, tmp_path / "resumed", **common, **{"trainer.max_steps": "6", "resume": "auto"}))
    assert metrics["resumed_from"].endswith("step=0000003.ckpt")
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(full) == sorted(resumed) == list(range(6))
    assert resumed == full  # bit for bit: weights, optimizer, scheduler, data position, sigma and noise


def test_resume_auto_skips_a_truncated_newest_checkpoint_and_redoes_its_steps(demo, tmp_path, caplog):
    common = {"trainer.checkpoint_every_n_steps": "2", "logger.wandb": "false", "trainer.max_steps": "4"}
    run(config(demo, tmp_path / "full", **common))
    shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    newest = tmp_path / "resumed" / "checkpoints" / "step=0000004.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash or a full disk outside our atomic writes
    with caplog.at_level(logging.WARNING):
        metrics = run(config(demo, tmp_path / "resumed", **common, resume="auto"))
    assert f"skipping the damaged checkpoint {newest}" in caplog.text
    assert metrics["resumed_from"].endswith("step=0000002.ckpt") and metrics["step"] == 4
    assert losses(tmp_path / "resumed") == {k: v for k, v in losses(tmp_path / "full").items() if k >= 2}
    assert load_pickled(newest)["global_step"] == 4  # saved over the damaged one


def test_a_crafted_resume_file_is_refused_naming_it(demo, tmp_path):
    crafted = tmp_path / "step=0000002.ckpt"
    torch.save({"state_dict": {}, "global_step": 2, "payload": Payload(tmp_path / "MARKER")}, crafted)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(crafted))}: holds a pickled .*could run code"):
        run(config(demo, tmp_path / "run", **{"trainer.max_steps": "2", "logger.wandb": "false",
                                              "resume": f"'{crafted}'"}))
    assert not (tmp_path / "MARKER").exists()


def test_a_run_killed_mid_training_resumes_from_its_newest_checkpoint(demo, tmp_path):
    """SIGKILL a real `python train.py` process once it has written a checkpoint; the rerun (resume=auto) ends
    with the same per-step losses as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    steps = 12
    args = {"data.shards": f"[{demo / 'train'}]", "data.val_shards": f"[{demo / 'val'}]", "data.durations": "[0.5]",
            "trainer.enable_progress_bar": "false", "trainer.val_every_n_steps": "6", "trainer.max_steps": str(steps),
            "trainer.checkpoint_every_n_steps": "2", "trainer.log_every_n_steps": "1", "flow.held_out_samples": "1",
            "flow.held_out_quantiles": "2", "logger.wandb": "false"}
    train_py = Path(__file__).resolve().parents[2] / "train.py"

    def command(run_dir):
        return [sys.executable, str(train_py), "recipe=quickstart", f"run_dir={run_dir}",
                *(f"{k}={v}" for k, v in args.items())]

    subprocess.run(command(tmp_path / "full"), check=True, capture_output=True, cwd=tmp_path)
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 300
    # kill once a checkpoint exists and the CSV rows before it are on disk (Lightning logs step 3's row after
    # saving step=4's checkpoint, so a kill in between loses that row, not training state)
    def ready() -> bool:
        try:
            return (killed / "checkpoints" / "step=0000004.ckpt").exists() and 3 in losses(killed)
        except (ValueError, KeyError):  # a row being written as we read
            return False

    while not ready() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    newest = max((killed / "checkpoints").glob("step=*.ckpt"))
    assert int(newest.stem.split("=")[1]) < steps  # it really stopped mid-run
    subprocess.run(command(killed), check=True, capture_output=True, cwd=tmp_path)
    assert losses(killed) == losses(tmp_path / "full") and sorted(losses(killed)) == list(range(steps))


def test_both_experts_alternate_with_their_own_state_and_outputs(demo, tmp_path):
    """expert=both on the tiny MoE: each expert's losses are exactly those of a run training that expert alone,
    so phases share nothing (weights, optimizer, data position, sigma range); each gets its own outputs."""
    from tests.helpers import write_official_folder

    folder = tmp_path / "Wan-tiny"
    folder.mkdir()
    write_official_folder(folder)  # the tiny VAE and umT5 the raw-video batches are encoded with

    def moe(run_dir, **extra):
        overrides = {"model": "tiny", "model.size": "tiny-moe", "model.encoders": str(folder), "logger.wandb": "false",
                     "trainer.max_steps": "4", "trainer.checkpoint_every_n_steps": "2", **extra}
        return config(demo, run_dir, **overrides)

    sampling = {"validation.every_n_steps": "2", "validation.steps": "2", "validation.width": "32",
                "validation.height": "32", "validation.num_frames": "5", "validation.prompts": "[a fox]"}
    both = run(moe(tmp_path / "both", expert="both", **{"expert.alternate_every": "2"}, **sampling))
    alone = run(moe(tmp_path / "high", expert="high_noise"))
    assert both["high_noise/step"] == both["low_noise/step"] == 4
    assert losses(tmp_path / "both" / "high_noise") == losses(tmp_path / "high")
    assert losses(tmp_path / "both" / "low_noise") != losses(tmp_path / "high")
    for expert in ("high_noise", "low_noise"):
        assert (tmp_path / "both" / expert / "dit").is_dir()
        assert (tmp_path / "both" / expert / "checkpoints" / "step=0000004.ckpt").is_file()
        # validation videos of each expert's phases, sampled with the other expert's current weights
        for step in (2, 4):
            assert (tmp_path / "both" / expert / "samples" / f"step_{step:07d}" / "prompt_00.mp4").is_file()
    assert alone["step"] == 4


@pytest.mark.parametrize("size", ["tiny-i2v", "tiny-ti2v"])
def test_image_conditioned_models_train_from_raw_video(demo, tmp_path, size):
    """I2V: y and CLIP features computed from the clip's first frame with the folder's VAE and CLIP; TI2V: the
    Wan2.2 VAE's latents with image-mode samples. Two steps each, from an official-layout tiny folder."""
    from tests.helpers import write_official_folder

    folder = tmp_path / "Wan-tiny"
    folder.mkdir()
    write_official_folder(folder, size)
    overrides = {"model": "tiny", "model.size": size, "model.checkpoint": str(folder), "logger.wandb": "false",
                 "trainer.max_steps": "2", "data.spatial_stride": "32" if size == "tiny-ti2v" else "16",
                 "validation.every_n_steps": "2", "validation.steps": "1", "validation.prompts": "[a fox]",
                 "validation.width": "64", "validation.height": "64", "validation.num_frames": "5"}
    metrics = run(config(demo, tmp_path / "run", **overrides))
    assert metrics["step"] == 2 and metrics["val/loss"] == metrics["val/loss"]
    # validation videos: I2V from the first frame of a held-out clip at its size; TI2V (which can do t2v) from text
    meta = json.loads((tmp_path / "run" / "samples" / "step_0000002" / "prompt_00.json").read_text())
    held_out_size = (meta["settings"]["width"], meta["settings"]["height"], meta["settings"]["num_frames"])
    assert held_out_size == ((176, 96, 9) if size == "tiny-i2v" else (64, 64, 5))  # the recipe's 96p bucket


@pytest.mark.slow
def test_a_compiled_quickstart_trains_10_steps_with_no_graph_break_or_recompile(demo, tmp_path):
    """model.compile=true through inductor: one graph for the training blocks and one for the held-out loss (no
    grad) over 10 steps and two held-out evaluations, no graph break, and the losses of the eager run."""
    from wan_train.models.dit.compile import compile_counts, reset_compile_counts

    common = {"trainer.max_steps": "10", "trainer.val_every_n_steps": "5", "flow.held_out_samples": "1",
              "logger.wandb": "false", "trainer.checkpoint_every_n_steps": "10"}
    eager = run(config(demo, tmp_path / "eager", **common))
    reset_compile_counts()
    compiled = run(config(demo, tmp_path / "compiled", **common, **{"model.compile": "true"}))
    assert compile_counts() == {"frames": 2, "graphs": 2, "graph_breaks": 0}
    ours, theirs = losses(tmp_path / "compiled"), losses(tmp_path / "eager")
    assert sorted(ours) == list(range(10))
    for step, loss in theirs.items():  # inductor fuses and reorders float32 arithmetic: not bit for bit
        assert ours[step] == pytest.approx(loss, rel=1e-3), step
    assert compiled["val/loss"] == pytest.approx(eager["val/loss"], rel=1e-3)
    # the export is the eager model's layout: same names, loadable as a plain DiT
    assert set(load_dit(tmp_path / "compiled" / "dit").state_dict()) == set(load_dit(tmp_path / "eager" / "dit")
                                                                           .state_dict())


@pytest.mark.slow
def test_bf16_mixed_quickstart_losses_stay_near_float32(demo, tmp_path):
    """trainer.precision=bf16-mixed on the CPU (autocast to bfloat16) with the float32 islands kept (time embedding,
    norms, modulation, residual stream): each of 6 steps' losses within 0.5% of the float32 run's, the held-out
    loss within 0.2% (measured: 0.01% and 0.006%). The float32 run is deterministic on the CPU, so any difference
    at all is bf16 at work."""
    common = {"trainer.max_steps": "6", "trainer.val_every_n_steps": "6", "flow.held_out_samples": "2",
              "logger.wandb": "false", "trainer.checkpoint_every_n_steps": "6"}
    full = run(config(demo, tmp_path / "fp32", **common))
    mixed = run(config(demo, tmp_path / "bf16", **common, **{"trainer.precision": "bf16-mixed"}))
    ours, theirs = losses(tmp_path / "bf16"), losses(tmp_path / "fp32")
    assert sorted(ours) == sorted(theirs) == list(range(6))
    worst = max(abs(ours[s] - theirs[s]) / theirs[s] for s in theirs)
    print(f"bf16-mixed vs float32: worst step loss {100 * worst:.2f}%, held-out "
          f"{100 * abs(mixed['val/loss'] / full['val/loss'] - 1):.3f}%")
    assert 0 < worst < 0.005, worst  # not identical (bf16 ran), not far
    assert mixed["val/loss"] == pytest.approx(full["val/loss"], rel=0.002)
