"""One sweep cell: generate the fixed prompts with fixed seeds through the shared inference module
(wan_train.inference.cli.generate_videos, exactly what generate.py runs), score every video, and write
`<out>/cells/<id>/result.json` atomically beside the videos.

The cell id is a hash of everything that decides the videos and the numbers: the sweep config minus where
things go, the prompts themselves (not the file naming them), and the checkpoint actually loaded (a run folder's
step, and its file's size and mtime). A cell whose result.json exists with the same id is finished: re-running a
sweep skips it, so a sweep cut short (a kill, preemption, a time limit) completes by running it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from eval.fvd import FVD, Protocol, clips_from_video
from eval.i3d import load_i3d
from eval.real import real_statistics
from eval.scorers import build_scorers, build_sound_scorers, read_sound, resolve_device, score_sound, score_videos
from wan_train.config.schema import GenerateConfig
from wan_train.fileio import durable
from wan_train.inference.cli import generate_videos, parse_adapters, read_prompts
from wan_train.inference.loading import is_run_folder, run_checkpoint
from wan_train.inference.pipeline import AV_TASKS
from wan_train.lora import Registry

log = logging.getLogger(__name__)

RESULT = "result.json"
# keys that say where things go or how they are shown, not what is measured
# the sound's settings: coordinates of the cells of an audio-video model (task t2av / ti2av) only
AUDIO_PARAMS = ("audio_guidance_scale", "slg_layer", "audio_latent_length")
NOT_IDENTITY = ("name", "out", "wandb", "record_scores", "preview", "batch_size", "offload_model", "prompt",
                "prompts_file")
GENERATE_KEYS = tuple(f.name for f in dataclasses.fields(GenerateConfig) if f.name != "out")


def cell_identity(cfg: DictConfig) -> dict:
    """What decides a cell's videos and numbers (JSON-ready)."""
    identity = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_IDENTITY}
    identity["metrics"].pop("device")
    for key, off in (("sync", False), ("syncnet", None)):  # off: the ids of cells finished before they existed
        if identity["metrics"][key] == off:
            identity["metrics"].pop(key)
    for key in ("cache_dir", "batch_size"):
        identity["metrics"]["fvd"].pop(key)
    identity["prompts"] = read_prompts(cfg)
    identity["checkpoint"] = checkpoint_identity(cfg.ckpt, cfg.step)
    # the adapter files a ref resolves to now (a registry ref follows promotion and new versions)
    identity["adapters"] = [dataclasses.asdict(a) for a in parse_adapters(cfg.lora, root=cfg.lora_root)]
    return identity


def checkpoint_identity(ckpt: str, step: int | None) -> dict:
    path = Path(ckpt)
    if is_run_folder(path):
        step, file = run_checkpoint(path, step)
        stat = file.stat()
        return {"run": str(path.resolve()), "step": step, "file": file.name, "bytes": stat.st_size,
                "mtime": int(stat.st_mtime)}
    return {"path": str(path.resolve())}


def cell_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def cell_folder(cfg: DictConfig, identity: dict) -> Path:
    return Path(cfg.out) / "cells" / cell_id(identity)


def finished(folder: Path, identity: dict) -> dict | None:
    """The stored result when the cell at `folder` finished under the same identity."""
    path = folder / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is damaged; the cell runs again", path)
        return None
    return result if result.get("identity") == identity else None


def run_cell(cfg: DictConfig) -> dict:
    """The cell's result (from disk when it finished earlier, with "skipped": True)."""
    check_cell(cfg)
    identity = cell_identity(cfg)
    folder = cell_folder(cfg, identity)
    done = finished(folder, identity)
    if done is not None:
        log.info("cell %s finished earlier (%s); skipped", folder.name, folder / RESULT)
        return {**done, "skipped": True}
    began = time.time()
    refs = [] if cfg.refs is None else [cfg.refs] if isinstance(cfg.refs, str) else [str(r) for r in cfg.refs]
    scorers = build_scorers(cfg.metrics, refs=refs if cfg.task == "r2v" else [])
    sound_scorers = build_sound_scorers(cfg.metrics)
    fvd = build_fvd(cfg.metrics)
    videos, notes = [], []
    for saved, video in generate_videos(generate_config(cfg, folder)):
        meta = json.loads(saved.metadata.read_text())
        scores = score_videos(scorers, video[None], [meta["prompt"]])
        scores.update(sound_scores(sound_scorers, saved, video, fps=meta["settings"]["fps"], task=cfg.task,
                                   notes=notes))
        if fvd is not None:
            fvd.update(generated_clips(video, fvd.protocol, what=saved.video), real=False)
        videos.append({"prompt": meta["prompt"], "seed": meta["seed"], "video": str(saved.video.relative_to(folder)),
                       "preview": str(saved.preview.relative_to(folder)) if saved.preview else None,
                       **({"sound": str(saved.sound.relative_to(folder))} if saved.sound else {}),
                       "seconds": meta["seconds_per_video"], **{k: float(v[0]) for k, v in scores.items()}})
    metrics = {name: sum(v[name] for v in videos) / len(videos) for name in videos[0] if _is_score(name)}
    metrics["seconds_per_video"] = sum(v["seconds"] for v in videos) / len(videos)
    result = {"id": folder.name, "identity": identity, "params": params(cfg, meta, identity), "metrics": metrics,
              "videos": videos, "models": {k: v for s in (*scorers, *sound_scorers) for k, v in s.describe().items()},
              "checkpoint": meta["checkpoint"], "settings": meta["settings"], "task": meta["task"],
              "seconds": round(time.time() - began, 3), **({"notes": notes} if notes else {})}
    if fvd is not None:
        fvd_result = fvd.result()
        metrics["fvd"] = fvd_result.pop("fvd")
        result["fvd"] = fvd_result
    write_json(folder / RESULT, result)
    log.info("cell %s: %s", folder.name, {k: round(v, 4) for k, v in metrics.items()})
    if cfg.record_scores:
        record(cfg, metrics)
    return result


def check_cell(cfg: DictConfig) -> None:
    """Settings that would only fail after generating: refused before."""
    if cfg.record_scores:
        registry_ref(cfg)
    fvd = cfg.metrics.fvd
    if fvd.i3d is not None and fvd.real_shards is None:
        raise ValueError("metrics.fvd.i3d is set but metrics.fvd.real_shards is not: FVD compares with real clips")
    if fvd.i3d is not None and not Path(fvd.i3d).is_file():
        raise FileNotFoundError(f"metrics.fvd.i3d={fvd.i3d}: no such file")


def sound_scores(scorers: list, saved, video: torch.Tensor, *, fps: float, task: str, notes: list[str]) -> dict:
    """The sound scorers' values for one saved video and its .wav; none, and a note in `notes` (once), when the
    video has no sound."""
    if not scorers:
        return {}
    if saved.sound is None:
        note = f"metrics.sync / metrics.syncnet skipped: the videos have no sound (task={task})"
        if note not in notes:
            notes.append(note)
            log.warning("%s", note)
        return {}
    sound, rate = read_sound(saved.sound)
    return score_sound(scorers, video[None], [sound], fps=fps, sample_rate=rate)


def generate_config(cfg: DictConfig, folder: Path) -> DictConfig:
    """The cell as generate.py's config: its keys, and its videos under <cell>/videos/."""
    values = {k: cfg[k] for k in GENERATE_KEYS}
    values["out"] = str(folder / "videos" / "video.mp4")
    return OmegaConf.merge(OmegaConf.structured(GenerateConfig), values)


def build_fvd(metrics) -> FVD | None:
    fvd = metrics.fvd
    if fvd.i3d is None:
        return None
    device = resolve_device(metrics.device)
    network = load_i3d(fvd.i3d, layout=fvd.layout)
    protocol = Protocol.for_network(network, clips=fvd.real_clips, frames=fvd.frames, stride=fvd.stride,
                                    covariance=fvd.covariance)
    stats = real_statistics(network, protocol=protocol, shards=_plain(fvd.real_shards), limit=fvd.real_clips,
                            cache_dir=fvd.cache_dir, batch_size=fvd.batch_size, device=device)
    return FVD(network, protocol=protocol, real_stats=stats).to(device)


def generated_clips(video: torch.Tensor, protocol: Protocol, *, what) -> torch.Tensor:
    clips = clips_from_video(video, frames=protocol.frames, stride=protocol.stride)
    if len(clips) == 0:
        raise ValueError(f"{what}: {video.shape[1]} frames, too few for one FVD clip of metrics.fvd.frames="
                         f"{protocol.frames} (stride {protocol.stride}); lower metrics.fvd.frames or raise num_frames")
    return clips


def params(cfg: DictConfig, meta: dict, identity: dict) -> dict:
    """The cell's coordinates for tables: what was loaded and the sampling settings actually used (official
    values filled in where the sweep left a key unset)."""
    settings = meta["settings"]
    lora = _plain(cfg.lora)
    return {"ckpt": cfg.ckpt, "step": identity["checkpoint"].get("step"), "ema": cfg.ema,
            "lora": lora if lora is None or isinstance(lora, str) else ",".join(map(str, lora)),
            **{k: settings[k] for k in ("solver", "steps", "shift", "guidance_scale", "guidance_scale_2", "width",
                                        "height", "num_frames")},
            "seed": cfg.seed,
            # sweeps of an audio-video model: the sound's settings too
            **({k: settings[k] for k in AUDIO_PARAMS} if meta["task"] in AV_TASKS else {})}


def _plain(value):
    """A config value as plain Python (lists from the command line arrive as ListConfig)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _is_score(name: str) -> bool:
    return name not in ("prompt", "seed", "video", "preview", "sound", "seconds")


def registry_ref(cfg: DictConfig) -> str:
    lora = cfg.lora
    if not isinstance(lora, str) or ":" in lora or lora.strip("/").count("/") not in (1, 2):
        raise ValueError(f"record_scores=true needs lora= one registry ref (client/adapter or "
                         f"client/adapter/vNNNN) without a strength; got lora={lora!r}")
    return lora


def record(cfg: DictConfig, metrics: dict) -> None:
    version = Registry(cfg.lora_root).record_scores(registry_ref(cfg), metrics)
    log.info("scores recorded in %s", version.path / "manifest.json")


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Atomically and durably (a temp file beside `path`, fsynced, renamed; the umask's permissions, not
    mkstemp's 0600): a killed sweep never leaves half a result."""
    durable.write_text(path, text)
