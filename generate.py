"""Generate videos with a trained run or a Wan model.

usage: python generate.py ckpt=PATH prompt="..." out=FILE.mp4 [key=value ...]

examples:
  python generate.py ckpt=runs/quickstart prompt="a large red circle moves from left to right on a black background" out=x.mp4
  python generate.py ckpt=Wan2.1-T2V-1.3B prompt="a red fox in the snow" steps=30 seed=1 out=fox.mp4
  python generate.py ckpt=Wan2.1-I2V-14B-480P task=i2v image=first.png prompt="..." out=i2v.mp4
  python generate.py ckpt=Wan2.1-T2V-1.3B lora=acme/mascot:0.8 prompt="zxq mascot waves" out=mascot.mp4

ckpt is a training run folder (its config.yaml and newest checkpoint), a Wan model folder (official or
diffusers) or a DiT file with encoders=FOLDER. Settings left out take the model's official values; every key is
in GenerateConfig (wan_train/config/schema.py). Each video gets a preview (png contact sheet or gif) and a .json
of its settings beside it. A mistake is one line on stderr and exit status 2 (HYDRA_FULL_ERROR=1: the traceback).
The work is in wan_train.inference.cli."""

import sys

import hydra
from omegaconf import DictConfig

from wan_train.config import GenerateConfig
from wan_train.config.compose import GENERATE_CONF_DIR, quote_text_overrides, register, usage
from wan_train.config.errors import user_errors_in_one_line
from wan_train.config.keys import check_keys, check_overrides
from wan_train.inference.cli import run


@hydra.main(config_path=str(GENERATE_CONF_DIR), config_name="generate", version_base=None)
@user_errors_in_one_line
def main(cfg: DictConfig) -> None:
    check_keys(cfg, GenerateConfig)
    for saved in run(cfg):
        print(f"wrote {saved.video}  (settings: {saved.metadata})")


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):  # the script's usage (Hydra's own: --hydra-help)
        print(usage(__doc__, train=False))
        sys.exit(0)
    register()
    sys.argv[1:] = quote_text_overrides(sys.argv[1:])  # prompt="Shot 1: wide — ..." as typed
    user_errors_in_one_line(check_overrides)(sys.argv[1:], GenerateConfig, groups={"hydra"})
    sys.exit(main())
