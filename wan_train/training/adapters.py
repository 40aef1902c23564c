"""What a LoRA run leaves: the adapter in peft's folder layout (run_dir/adapter, and run_dir/adapter_ema with EMA),
each file stamped with its base model's identity and expert; and, with lora.client and lora.name, a new version in
the registry carrying its lineage (base, expert(s), kind, trigger words, recipe and resolved config, data
fingerprint, steps, held-out losses)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from wan_train.data.shards import expand_urls, fingerprint
from wan_train.lora import adapter_modules
from wan_train.lora.formats import write_lora
from wan_train.lora.registry import AdapterVersion, Registry
from wan_train.lora.resolve import BASE_KEY, DENSE, EXPERT_KEY, PEFT_WEIGHTS, stamp
from wan_train.models import EXPERTS

log = logging.getLogger(__name__)


TOWERS_KEY = "wan_train.towers"  # a twin-tower model's adapter: the towers its target covers, and "+fusion"


def export_adapter(dit: nn.Module, folder: Path, *, base: str, expert: str | None,
                   weights: dict | None = None, towers: str | None = None) -> Path | None:
    """Write the injected adapter (or `weights`, e.g. the EMA shadow) as a peft folder; None for DoRA, whose
    magnitude vectors only the run folder's checkpoints carry. The folder appears whole (weights and config of one
    export, never one of each), replacing an existing one in one step (write_lora's peft folder)."""
    try:
        modules = adapter_modules(dit, weights)
    except ValueError as error:
        log.warning("%s not written: %s", folder, error)
        return None
    metadata = {BASE_KEY: base, EXPERT_KEY: expert or DENSE} | ({TOWERS_KEY: towers} if towers else {})
    write_lora(folder, modules, format="peft", metadata=metadata)
    return folder


def adapter_towers(cfg: DictConfig, dit: nn.Module) -> str | None:
    """What a twin-tower run's adapter covers, as recorded in its files: e.g. "video,audio+fusion"; None for a
    Wan DiT."""
    if not hasattr(dit, "audio_model"):
        return None
    return ",".join(cfg.lora.towers) + ("+fusion" if cfg.lora.fusion else "")


def run_adapters(cfg: DictConfig, run_dir: Path) -> dict[str, Path]:
    """expert key ("dit", or high_noise / low_noise) -> the run's adapter folder to register."""
    use_ema = bool(cfg.trainer.ema_decay) and cfg.lora.use_ema
    name = "adapter_ema" if use_ema else "adapter"
    if cfg.expert.name == "both":
        folders = {e: run_dir / e / name for e in EXPERTS}
    else:
        folders = {cfg.expert.name or DENSE: run_dir / name}
    for key, folder in folders.items():
        if not (folder / PEFT_WEIGHTS).is_file():
            raise FileNotFoundError(f"{folder}: no {PEFT_WEIGHTS} to register for {key} (DoRA adapters, "
                                    "lora.dora=true, are not written as plain LoRA files)")
    return folders


def register_run(cfg: DictConfig, run_dir: Path, metrics: dict) -> AdapterVersion:
    """Publish the finished run's adapter(s) as the next version of <lora.root>/<client>/<name>."""
    folders = run_adapters(cfg, run_dir)
    dense = list(folders) == [DENSE]
    weights, bases = {}, {}
    with tempfile.TemporaryDirectory(prefix="wan_train_adapter_") as tmp:
        for key, folder in folders.items():
            target = Path(tmp) if dense else Path(tmp) / key
            shutil.copytree(folder, target, dirs_exist_ok=True)
            weights[key] = PEFT_WEIGHTS if dense else f"{key}/{PEFT_WEIGHTS}"
            bases[key] = stamp(folder / PEFT_WEIGHTS)[BASE_KEY]
        manifest = {
            "kind": cfg.lora.kind, "trigger_words": list(cfg.lora.trigger_words),
            "base": {"name": cfg.model.size, "checkpoint": cfg.model.checkpoint, "identity": bases},
            "experts": list(folders), "weights": weights,
            "lora": {k: cfg.lora[k] for k in ("target", "rank", "alpha", "dropout", "rslora", "dora")},
            "ema": folders[next(iter(folders))].name == "adapter_ema",
            "recipe": cfg.recipe, "config": OmegaConf.to_container(cfg, resolve=True),
            "data": {"shards": list(cfg.data.shards), "fingerprint": fingerprint(expand_urls(cfg.data.shards))},
            "steps": {key: int(metrics.get(f"{key}/step", metrics.get("step", 0))) for key in folders},
            "held_out_loss": {key: metrics.get(f"{key}/val/loss", metrics.get("val/loss")) for key in folders},
            "run_dir": str(run_dir), "git_revision": _git_revision(run_dir),
            "scores": {},
        }
        version = Registry(cfg.lora.root).publish(cfg.lora.client, cfg.lora.name, Path(tmp), manifest)
    log.info("registered %s at %s", version.ref, version.path)
    return version


def _git_revision(run_dir: Path) -> str:
    path = run_dir / "git_revision.txt"
    return path.read_text().strip() if path.is_file() else "unknown"
