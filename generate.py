"""Generate videos with a trained run or a Wan model:

    python generate.py ckpt=PATH prompt="..." out=FILE.mp4 [steps=N] [seed=S] [task=i2v image=IMG] [lora=REF[:W]]

ckpt is a training run folder (its config.yaml and newest checkpoint), a Wan model folder (official or
diffusers) or a DiT file with encoders=FOLDER. Settings left out take the model's official values; every key is
in GenerateConfig (wan_train/config/schema.py). The work is in wan_train.inference.cli."""

import sys

import hydra
from omegaconf import DictConfig

from wan_train.config.compose import GENERATE_CONF_DIR, quote_text_overrides, register
from wan_train.inference.cli import run


@hydra.main(config_path=str(GENERATE_CONF_DIR), config_name="generate", version_base=None)
def main(cfg: DictConfig) -> None:
    for saved in run(cfg):
        print(f"wrote {saved.video}  (settings: {saved.metadata})")


if __name__ == "__main__":
    register()
    sys.argv[1:] = quote_text_overrides(sys.argv[1:])  # prompt="Shot 1: wide — ..." as typed
    sys.exit(main())
