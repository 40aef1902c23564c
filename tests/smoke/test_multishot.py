"""Multi-shot through train.py and generate.py on the CPU: a quickstart run with model.shots=2 holds the shot
embeddings in its checkpoints, and `generate.py multishot=true` makes one video of the prompt's shots (each shot
decoded on its own, so the frame count is the shots' sum)."""

import decord
import pytest
import torch

from data_tools.make_demo import make_demo
from wan_train.config import ConfigError, compose_config, compose_generate_config, validate
from wan_train.inference.cli import run as generate
from wan_train.training.run import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("multishot")
    make_demo(root / "train", num_clips=4, seed=0, width=256, height=144, frames=17, fps=16.0, shard_size=4)
    cfg = compose_config(["recipe=quickstart", f"run_dir={root / 'run'}", f"data.shards=[{root / 'train'}]",
                          f"data.val_shards=[{root / 'train'}]", "data.durations=[0.5]", "model.shots=2",
                          "trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2",
                          "trainer.enable_progress_bar=false", "validation.every_n_steps=null", "logger.wandb=false",
                          "flow.held_out_samples=1", "flow.held_out_quantiles=1"])
    run(cfg)
    return root / "run"


def test_the_run_holds_the_shot_embeddings_and_generates_the_prompts_shots(trained, tmp_path):
    state = torch.load(trained / "checkpoints" / "step=0000002.ckpt", weights_only=True)["state_dict"]
    assert state["dit.shot_embedding"].shape == (2, 256)
    out = tmp_path / "story.mp4"
    prompt = "'A park at noon. Shot 1: wide — a red ball rolls. Shot 2: close-up — the ball stops.'"
    saved = generate(compose_generate_config([f"ckpt={trained}", f"prompt={prompt}", "multishot=true", "steps=2",
                                              "num_frames=17", f"out={out}", "preview=none"]))
    assert len(decord.VideoReader(str(saved[0].video))) == 9 + 5  # shots of 1 + 8 and 1 + 4 frames
    with pytest.raises(ValueError, match="3 shots asked for; this model knows 2"):
        generate(compose_generate_config([f"ckpt={trained}", "prompt='Shot 1: a. Shot 2: b. Shot 3: c.'",
                                          "multishot=true", "steps=1", "num_frames=33", f"out={out}"]))


def test_multishot_settings_are_checked():
    with pytest.raises(ConfigError, match="model.shots=-1"):
        validate(compose_config(["recipe=quickstart", "model.shots=-1"]))


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    root = tmp_path_factory.mktemp("stories")
    make_demo(root / "train", num_clips=4, seed=0, width=256, height=144, frames=33, fps=16.0, shard_size=4,
              shots=True)
    make_demo(root / "val", num_clips=1, seed=1, width=256, height=144, frames=33, fps=16.0, shard_size=1,
              shots=True)
    return root


def test_recipe_multishot_trains_on_captioned_shots_and_cuts_are_measured(stories, trained, tmp_path):
    import json

    from eval import multishot

    run_dir = tmp_path / "run"
    metrics = run(compose_config([
        "recipe=multishot", "model=quickstart", "data=stories", "trainer=cpu", f"model.checkpoint={trained / 'dit'}",
        "model.shots=2",
        f"run_dir={run_dir}", f"data.shards=[{stories / 'train'}]", f"data.val_shards=[{stories / 'val'}]",
        "data.durations=[1.0]", "trainer.max_steps=2", "trainer.val_every_n_steps=2",
        "trainer.checkpoint_every_n_steps=2", "trainer.enable_progress_bar=false", "logger.wandb=false",
        "flow.held_out_samples=1", "flow.held_out_quantiles=1", "optim.lr=1e-2"]))
    assert metrics["step"] == 2 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    state = torch.load(run_dir / "checkpoints" / "step=0000002.ckpt", weights_only=True)["state_dict"]
    assert state["dit.shot_embedding"][:2].abs().sum() > 0  # the two shots' embeddings trained away from zero
    prompts = tmp_path / "stories.txt"
    prompts.write_text("Shot 1: wide — a small red circle moves from left to right on a black background. "
                       "Shot 2: close-up — a large red circle moves from top to bottom on a grey background.\n")
    out = tmp_path / "cuts.json"
    assert multishot.main([str(run_dir), "--prompts", str(prompts), "--frames", "17", "--steps", "2",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["multishot"] and result["prompts"][0]["requested_cuts"] == [9]
    assert 0 <= result["cut_rate"] <= 1 and len(result["prompts"][0]["detected_cuts"]) == 1
