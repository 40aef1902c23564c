"""Train a Wan DiT with rectified flow matching:  python train.py recipe=NAME key=value ...

Recipes are in recipes/ (quickstart, lora_character, lora_style, full_high_noise, full_low_noise, full_1_3b);
config groups in conf/. All the work is in wan_train.training.run; this file composes the config and, for the
demo data the quickstart uses, generates it on first use."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from wan_train.config.compose import CONF_DIR, register
from wan_train.training.run import run

DEMO = {"data/demo": 0, "data/demo_val": 1}  # folder -> make_demo seed (the held-out clips use another seed)


def ensure_demo_data(cfg: DictConfig) -> None:
    for shards in (*cfg.data.shards, *cfg.data.val_shards):
        if shards in DEMO and not any(Path(shards).glob("*.tar")):
            from data_tools.make_demo import make_demo

            count = 64 if DEMO[shards] == 0 else 8
            make_demo(shards, num_clips=count, seed=DEMO[shards], width=256, height=144, frames=49, fps=16.0,
                      shard_size=16)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    ensure_demo_data(cfg)
    metrics = run(cfg)
    print(f"run folder: {cfg.run_dir}  step {metrics['step']}  held-out loss {metrics['val/loss_first']:.4f} -> "
          f"{metrics['val/loss']:.4f}")


if __name__ == "__main__":
    register()
    sys.exit(main())
