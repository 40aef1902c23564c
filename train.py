"""Train a Wan DiT with rectified flow matching:  python train.py recipe=NAME key=value ...

Recipes are in recipes/ (quickstart, lora_character, lora_style, r2v, multishot, full_high_noise, full_low_noise, ...);
config groups in conf/. All the work is in wan_train.training.run; this file composes the config and, for the
demo data the quickstart uses, generates it on first use."""

import sys
from pathlib import Path

from wan_train.training import signals

signals.install_early()  # in a SLURM job: a requeue warning during the imports below is recorded, not fatal

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from wan_train.config.compose import CONF_DIR, register  # noqa: E402
from wan_train.parallel.launch import detect_launch  # noqa: E402
from wan_train.training.requeue import EXIT_STOPPED  # noqa: E402
from wan_train.training.run import run  # noqa: E402

# folder -> (make_demo seed, clips, options): held-out clips use another seed; data=mascot is a character's,
# data=shapes names its subjects (reference-to-video), one or two shapes per clip; data=stories cuts each clip into
# two captioned shots (multi-shot)
DEMO = {"data/demo": (0, 64, {}), "data/demo_val": (1, 8, {}),
        "data/mascot": (0, 32, {"character": "zxq mascot"}), "data/mascot_val": (1, 8, {"character": "zxq mascot"}),
        "data/shapes": (0, 64, {"subjects": True}), "data/shapes_multi": (2, 32, {"subjects": True, "multi": True}),
        "data/shapes_val": (1, 8, {"subjects": True}),
        "data/stories": (0, 64, {"shots": True}), "data/stories_val": (1, 8, {"shots": True})}


def ensure_demo_data(cfg: DictConfig) -> None:
    for shards in (*cfg.data.shards, *cfg.data.val_shards, *(s for v in cfg.data.val_sets.values() for s in v)):
        if shards in DEMO and not any(Path(shards).glob("*.tar")):
            import fcntl

            from data_tools.make_demo import make_demo

            Path(shards).parent.mkdir(parents=True, exist_ok=True)
            with open(Path(shards).parent / f".{Path(shards).name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # the ranks of a job: one writes, the others wait for it
                if not any(Path(shards).glob("*.tar")):
                    seed, count, options = DEMO[shards]
                    make_demo(shards, num_clips=count, seed=seed, width=256, height=144, frames=49, fps=16.0,
                              shard_size=16, **options)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    signals.install(cfg.cluster)  # cluster.requeue: the signal is recorded and acted on at the next safe point
    ensure_demo_data(cfg)
    metrics = run(cfg)
    if metrics.get("stopped"):  # checkpointed at a safe point, work left (rank 0 said where): never exit 0
        raise SystemExit(EXIT_STOPPED)
    if detect_launch().rank != 0:
        return  # one summary per run, not per rank
    losses = [(key.removesuffix("_first"), value, metrics[key.removesuffix("_first")])
              for key, value in metrics.items() if key.endswith("loss_first")]
    print(f"run folder: {cfg.run_dir}  step {metrics.get('step', cfg.trainer.max_steps)}")
    for key, first, last in losses:
        print(f"  {key}: {first:.4f} -> {last:.4f} ({100 * (last - first) / first:+.1f}%)")
    if "adapter" in metrics:
        print(f"  registered adapter {metrics['adapter']} (python -m wan_train.lora show {metrics['adapter']})")


if __name__ == "__main__":
    register()
    sys.exit(main())
