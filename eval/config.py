"""The typed config of `python -m eval.sweep` (conf/eval/sweep.yaml): one sweep cell is everything generate.py
takes (GenerateConfig: checkpoint, step, adapters, sampling settings, prompts, seed), plus the metrics to compute
and where the sweep's results go. A Hydra multirun (-m) over any of these keys is the sweep."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from wan_train.config.compose import CONF_DIR
from wan_train.config.schema import GenerateConfig

SWEEP_CONF_DIR = CONF_DIR / "eval"  # the sweep's own search path (sweep.yaml, metrics/, hydra/launcher/)


@dataclass
class FVDConfig:
    """FVD of each cell's videos against real clips (eval.fvd). Off while i3d is None."""

    i3d: str | None = None  # rgb_imagenet.pt, i3d_pretrained_400.pt or the StyleGAN-V i3d_torchscript.pt
    layout: str | None = None  # rgb_imagenet | i3d_pretrained_400 when the file name does not tell
    real_shards: Any = None  # WebDataset shards of real videos (a path, brace pattern or list, as data.shards)
    real_clips: int = 2048  # real clips at most (StyleGAN-V fvd2048_16f)
    frames: int = 16  # frames per clip
    stride: int = 1  # every stride-th frame (StyleGAN-V subsample8f: 8)
    covariance: str = "biased"  # biased (1/N, StyleGAN-V, torchmetrics) | unbiased (1/(N-1))
    cache_dir: str = "cache/fvd"  # real statistics, keyed by the shards' fingerprint and the protocol
    batch_size: int = 8  # clips per I3D forward


@dataclass
class MetricsConfig:
    """Metric networks come from local folders / files; a metric whose model is None is skipped."""

    clip: str | None = None  # a transformers CLIP folder (e.g. openai/clip-vit-base-patch32) -> clip_score
    image_model: str | None = None  # a DINOv2 / DINO ViT / CLIP folder -> subject_consistency (+ identity)
    references: list[str] = field(default_factory=list)  # reference images -> identity (CLIP-I / DINO-I)
    frames: int = 8  # frames sampled uniformly per video for clip_score and identity
    # videos with sound (task=t2av / ti2av; cells without sound skip these with a note):
    sync: bool = False  # weight-free (eval.sync): av_offset, av_offset_confidence, onset_precision/recall/f1, av_align
    syncnet: str | None = None  # syncnet_v2.model -> lse_d, lse_c, syncnet_offset (talking-head clips, eval.syncnet)
    device: str = "auto"  # auto: cuda if available
    fvd: FVDConfig = field(default_factory=FVDConfig)


@dataclass
class WandbConfig:
    enabled: bool = True  # online when WANDB_API_KEY is set, offline files in the sweep folder otherwise
    project: str = "wan_train-eval"
    entity: str | None = None


@dataclass
class SweepConfig(GenerateConfig):
    """python -m eval.sweep -m ckpt=A,B guidance_scale=3,5 prompts_file=FILE [metrics.clip=FOLDER] ..."""

    name: str = "sweep"
    out: str = "sweeps/${name}"  # the sweep folder: cells/<id>/ (videos, result.json), results.csv / .json
    preview: str = "gif"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    record_scores: bool = False  # write each cell's scores into its adapter's registry manifest (lora=REF)


def register() -> None:
    from wan_train.parallel.slurm import register_resolver

    register_resolver()  # ${wan_slurm:...} in conf/eval/hydra/launcher/slurm.yaml
    ConfigStore.instance().store(name="sweep_schema", node=SweepConfig)


def compose_sweep_config(overrides: list[str] = ()):
    """What one cell of `python -m eval.sweep OVERRIDES` runs with (for tests and notebooks)."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(SWEEP_CONF_DIR), version_base=None):
        return compose("sweep", overrides=list(overrides))
