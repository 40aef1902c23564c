"""Train a Wan DiT with rectified flow matching (full fine-tune or LoRA), from a recipe and overrides.

usage: python train.py recipe=NAME [group=option ...] [key=value ...]
       python train.py -m ... key=a,b                 a sweep: one run per combination
       python train.py --cfg job recipe=NAME ...      print the composed config and exit

examples:
  python train.py recipe=quickstart                   # CPU, no downloads, a few minutes
  python train.py recipe=quickstart trainer.max_steps=1000 run_dir=runs/quickstart_1k
  python train.py recipe=lora_character model.checkpoint=Wan2.1-T2V-1.3B data.shards=[shards/]
  python train.py recipe=quickstart resume=never      # start afresh (default resume=auto: from the newest checkpoint)

Every key, its meaning and default: wan_train/config/schema.py; a key no schema declares is refused, also with +.
The run folder (run_dir) gets config.yaml, train.log, checkpoints/, csv/ metrics, wandb/ and the exported weights.
A mistake (a key, a value, a missing path) is one line on stderr and exit status 2; HYDRA_FULL_ERROR=1 shows the
traceback. All the work is in wan_train.training.run; this file composes the config and, for the demo data the
quickstart uses, generates it on first use."""

import sys
from pathlib import Path

from wan_train.training import signals

signals.install_early()  # in a SLURM job: a requeue warning during the imports below is recorded, not fatal

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from wan_train.config import TrainConfig, validate  # noqa: E402
from wan_train.config.compose import CONF_DIR, groups, register, usage  # noqa: E402
from wan_train.config.demo import AV_DEMO, DEMO  # noqa: E402
from wan_train.config.errors import user_errors_in_one_line  # noqa: E402
from wan_train.config.keys import check_keys, check_overrides  # noqa: E402
from wan_train.parallel.launch import detect_launch  # noqa: E402
from wan_train.training.requeue import EXIT_STOPPED  # noqa: E402
from wan_train.training.run import run  # noqa: E402

def ensure_demo_data(cfg: DictConfig) -> None:
    for shards in (*cfg.data.shards, *cfg.data.val_shards, *(s for v in cfg.data.val_sets.values() for s in v)):
        if (shards in DEMO or shards in AV_DEMO) and not any(Path(shards).glob("*.tar")):
            import fcntl

            from data_tools.make_av_demo import make_av_demo
            from data_tools.make_demo import make_demo

            Path(shards).parent.mkdir(parents=True, exist_ok=True)
            with open(Path(shards).parent / f".{Path(shards).name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # the ranks of a job: one writes, the others wait for it
                if any(Path(shards).glob("*.tar")):
                    continue
                if shards in AV_DEMO:
                    seed, count = AV_DEMO[shards]
                    make_av_demo(shards, num_clips=count, seed=seed, scene="screen")
                else:
                    seed, count, options = DEMO[shards]
                    make_demo(shards, num_clips=count, seed=seed,
                              **{"width": 256, "height": 144, "fps": 16.0, "shard_size": 16, "frames": 49, **options})


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
@user_errors_in_one_line
def main(cfg: DictConfig) -> None:
    check_keys(cfg, TrainConfig)  # a key added with + that no schema declares
    validate(cfg)  # before anything is made: the run folder, the demo data, a W&B run
    signals.install(cfg.cluster)  # cluster.requeue: the signal is recorded and acted on at the next safe point
    ensure_demo_data(cfg)
    metrics = run(cfg)
    if metrics.get("stopped"):  # checkpointed at a safe point, work left (rank 0 said where): never exit 0
        raise SystemExit(EXIT_STOPPED)
    signals.finished()  # a warning from here on (the summary, the interpreter's shutdown) cannot fail the job
    if detect_launch().rank != 0:
        return  # one summary per run, not per rank
    summary(cfg, metrics)


def summary(cfg: DictConfig, metrics: dict) -> None:
    step = metrics.get("step", cfg.trainer.max_steps)
    if metrics.get("finished"):
        print(f"run folder: {cfg.run_dir}  already finished at step {step} (trainer.max_steps="
              f"{cfg.trainer.max_steps}): nothing trained; raise trainer.max_steps to train further")
    else:
        print(f"run folder: {cfg.run_dir}  step {step}")
    for key, value in metrics.items():  # the whole run's first and last held-out loss, across resumes
        if key.endswith("loss_first"):
            name, last = key.removesuffix("_first"), metrics[key.removesuffix("_first")]
            change = f" ({100 * (last - value) / value:+.1f}%)" if value == value and value else ""
            print(f"  {name}: {value:.4f} -> {last:.4f}{change}")
    if "adapter" in metrics:
        print(f"  registered adapter {metrics['adapter']} (python -m wan_train.lora show {metrics['adapter']})")


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):  # the script's usage (Hydra's own: --hydra-help)
        print(usage(__doc__, train=True))
        sys.exit(0)
    register()
    user_errors_in_one_line(check_overrides)(sys.argv[1:], TrainConfig, groups=groups())
    sys.exit(main())
