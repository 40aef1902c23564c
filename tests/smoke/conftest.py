"""A short quickstart training run shared by the generate and eval smoke tests: 2 steps, a checkpoint at each,
validation videos at step 2 scored by a tiny random CLIP (the validation.metrics path)."""

import pytest

from data_tools.make_eval_models import write_clip
from tests.smoke.test_train import config
from wan_train.training.run import run


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory, clip_folder):
    """The folder holding train/ and val/ demo shards and the run/ folder."""
    from data_tools.make_demo import make_demo

    root = tmp_path_factory.mktemp("generate")
    make_demo(root / "train", num_clips=4, seed=0, width=256, height=144, frames=17, fps=16.0, shard_size=4)
    make_demo(root / "val", num_clips=1, seed=1, width=256, height=144, frames=17, fps=16.0, shard_size=1)
    metrics = f"[{{_target_:eval.scorers.ClipScore,model:'{clip_folder}'}},{{_target_:eval.scorers.Flickering}}]"
    overrides = {"trainer.max_steps": "2", "logger.wandb": "false", "validation.every_n_steps": "2",
                 "validation.steps": "2", "validation.num_frames": "5", "flow.held_out_samples": "1",
                 "trainer.checkpoint_every_n_steps": "1", "validation.metrics": metrics}
    run(config(root, root / "run", **overrides))
    return root


@pytest.fixture(scope="session")
def trained(trained_root):
    return trained_root / "run"
