"""`run(cfg)`: everything `python generate.py ...` does (callable from tests): load the checkpoint, settle the
sampling settings (official defaults of the model, overridden by the command line), fit the conditioning images,
denoise batch by batch under a progress bar, and write each video with its preview and settings. eval/ calls
`generate_videos`, which yields the video tensors as well."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from wan_train.inference import images as imaging
from wan_train.inference.av import generate_av
from wan_train.inference.loading import load
from wan_train.inference.outputs import SavedVideo, save_video
from wan_train.inference.pipeline import AV_TASKS, Adapter, WanModels, check_request, generate
from wan_train.inference.presets import Sampling, official, with_overrides
from wan_train.inference.references import check_tags, read_reference, read_voice
from wan_train.inference.solvers import SOLVERS
from wan_train.lora.resolve import resolve_adapter
from wan_train.marking import Marker
from wan_train.progress import progress

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run(cfg: DictConfig) -> list[SavedVideo]:
    return [saved for saved, _ in generate_videos(cfg)]


def generate_videos(cfg: DictConfig) -> Iterator[tuple[SavedVideo, torch.Tensor]]:
    """Each video as it is written: (its files, the video [3, F, H, W] in [-1, 1]); eval/ scores the tensors."""
    prompts = read_prompts(cfg)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.solver is not None and cfg.solver not in SOLVERS:
        raise ValueError(f"solver={cfg.solver!r}: expected one of {list(SOLVERS)}")
    loaded = load(cfg.ckpt, device=device, dtype=dtype, ema=cfg.ema, encoders=cfg.encoders, boundary=cfg.boundary,
                  step=cfg.step)
    models = loaded.models
    task = "i2v" if cfg.task == "ti2v" and models.config.model_type == "ti2v" else cfg.task
    settings = with_overrides(official(models.size), cfg)
    if task not in models.tasks:
        raise ValueError(f"task={cfg.task!r}: this {models.config.model_type} model ({cfg.ckpt}) can do "
                         f"{', '.join(models.tasks)}")
    settings, first, last = fit_images(models, task, settings, cfg)
    check_request(models, task, settings.replace(num_frames=1) if cfg.multishot else settings)
    references = read_references(cfg, task, settings)
    voices = read_voices(cfg, task, models)
    check_tags(prompts, len(references) or len(voices))
    adapters = parse_adapters(cfg.lora, root=cfg.lora_root)
    if task in AV_TASKS and (adapters or cfg.multishot):
        raise ValueError(f"task={task}: LoRA adapters and multishot are not supported on audio-video models yet")
    offload = cfg.offload_model if cfg.offload_model is not None else needs_offload(models, device)

    marker = Marker.from_config(cfg.marking)
    inputs = [cfg.image, cfg.last_image, *([] if cfg.refs is None else
                                            [cfg.refs] if isinstance(cfg.refs, str) else list(cfg.refs)),
              *([] if cfg.voices is None else [cfg.voices] if isinstance(cfg.voices, str) else list(cfg.voices))]
    jobs = [(p, cfg.seed + i) for i, p in enumerate(p for p in prompts for _ in range(cfg.num_videos_per_prompt))]
    out, written = Path(cfg.out), 0
    with progress("steps") as bars:
        bar = bars.add_task("denoising", total=len(jobs) * settings.steps)
        for start in range(0, len(jobs), cfg.batch_size):
            batch = jobs[start:start + cfg.batch_size]
            began = time.perf_counter()

            def on_step(done, total, expert):
                bars.update(bar, advance=1, description=f"denoising{f' ({expert})' if expert else ''}")

            sounds, rate = [None] * len(batch), None
            if task in AV_TASKS:
                made = generate_av(models, [p for p, _ in batch], settings=settings, seed=batch[0][1], task=task,
                                   images=first, device=device, on_step=on_step, voices=voices)
                videos, sounds, rate = made.video, made.audio, made.sample_rate
            else:
                videos = generate(models, [p for p, _ in batch], settings=settings, seed=batch[0][1], task=task,
                                  images=first, last_images=last, adapters=adapters, device=device, offload=offload,
                                  fuse_lora=cfg.fuse_lora, allow_base_mismatch=cfg.allow_base_mismatch,
                                  references=references, multishot=cfg.multishot, shot_count=cfg.shots,
                                  on_step=on_step)
            seconds = (time.perf_counter() - began) / len(batch)
            for (prompt, seed), video, sound in zip(batch, videos, sounds, strict=True):
                path = out if len(jobs) == 1 else out.with_name(f"{out.stem}_{written:03d}{out.suffix}")
                meta = metadata(cfg, loaded.source, prompt, seed, task, settings, adapters, seconds)
                written += 1
                yield save_video(path, video, fps=settings.fps, metadata=meta, preview=cfg.preview, marker=marker,
                                 ingredients=inputs, sound=None if sound is None else (sound, rate)), video


def read_prompts(cfg: DictConfig) -> list[str]:
    if cfg.ckpt is None:
        raise ValueError("ckpt is required: a training run folder, a Wan model folder or a DiT file")
    if cfg.prompts_file is not None:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts_file={path}: no such file")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif isinstance(cfg.prompt, (list, ListConfig)):
        prompts = [str(p) for p in cfg.prompt]
    else:
        prompts = [] if cfg.prompt is None else [str(cfg.prompt)]
    if not prompts:
        raise ValueError('no prompt: pass prompt="..." (or a list, or prompts_file=FILE with one per line)')
    return prompts


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r}: expected auto or one of {list(DTYPES)}")
    return DTYPES[name]


def fit_images(models: WanModels, task: str, settings: Sampling, cfg: DictConfig):
    """The output size follows the image at the settings' area (the official rules, inference.images), and the
    images are resized to it: (settings, first [1, 3, H, W] or None, last or None)."""
    if task in ("t2v", "r2v", "t2av"):
        if cfg.image is not None:
            raise ValueError(f"image={cfg.image} was given for task={task}; pass task=i2v (or the model's image "
                             "task)")
        return settings, None, None
    if cfg.image is None:
        raise ValueError(f"task={task} needs image=FILE (the first frame)")
    if task == "flf2v" and cfg.last_image is None:
        raise ValueError("task=flf2v needs last_image=FILE as well")
    image = imaging.read_image(cfg.image)
    area, (_, stride) = settings.width * settings.height, models.stride
    if models.config.model_type == "ti2v":
        width, height = imaging.best_output_size(image.width, image.height, multiple=stride, area=area)
        fit = imaging.ti2v_image
    else:
        width, height = imaging.i2v_size(image, area=area, stride=models.vae.spatial_compression,
                                         patch=models.config.patch_size[1])
        fit = imaging.i2v_image
    # the official settings at the fitted size (some depend on it: Wan2.1 I2V's shift), then the command line's
    settings = with_overrides(official(models.size, width=width, height=height), cfg).replace(width=width,
                                                                                              height=height)
    last = fit(imaging.read_image(cfg.last_image), width, height)[None] if task == "flf2v" else None
    return settings, fit(image, width, height)[None], last


def parse_adapters(value, *, root: str = "adapters") -> list[Adapter]:
    """lora=REF, lora=REF:0.8 or a list of them; REF is a registry ref (acme/mascot, acme/mascot/v0002), a peft
    folder or a LoRA file. A Wan2.2 pair from the registry gives one Adapter per expert."""
    items = [] if value is None else list(value) if isinstance(value, (list, ListConfig)) else [value]
    adapters = []
    for item in map(str, items):
        spec, _, strength = item.rpartition(":")
        try:
            weight = float(strength)
        except ValueError:
            spec, weight = item, 1.0
        spec = spec or item
        for found in resolve_adapter(spec, root=root):
            adapters.append(Adapter(str(found.path), weight, found.expert, found.base))
    return adapters


def needs_offload(models: WanModels, device: torch.device) -> bool:
    """Two experts that do not both fit in 80% of the free accelerator memory take turns on it."""
    if not models.is_moe or device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    need = sum(p.numel() * p.element_size() for dit in models.dits.values() for p in dit.parameters())
    return need > 0.8 * free


def read_references(cfg: DictConfig, task: str, settings: Sampling) -> list[torch.Tensor]:
    """task=r2v: refs=[FILE, ...] (images, or clips giving reference_frames consecutive frames each at the output's
    fps from reference_start seconds in) fitted to the output size."""
    refs = [] if cfg.refs is None else [cfg.refs] if isinstance(cfg.refs, str) else list(cfg.refs)
    if task != "r2v":
        if refs:
            raise ValueError(f"refs={refs} were given for task={task}; pass task=r2v")
        return []
    if not refs:
        raise ValueError("task=r2v needs refs=[FILE, ...]: one image or clip per subject the prompt tags @Video1..")
    if cfg.reference_frames < 1 or cfg.reference_start < 0:
        raise ValueError(f"reference_frames={cfg.reference_frames}, reference_start={cfg.reference_start}: the frames "
                         "taken from each clip reference must be >= 1, its start (seconds) >= 0")
    return [read_reference(path, width=settings.width, height=settings.height, frames=cfg.reference_frames,
                           fps=settings.fps, start=cfg.reference_start) for path in refs]


def read_voices(cfg: DictConfig, task: str, models: WanModels) -> list[torch.Tensor]:
    """voices=[FILE, ...] (task t2av / ti2av): one sound file per subject the prompt tags @Video1.., its voice."""
    voices = [] if cfg.voices is None else [cfg.voices] if isinstance(cfg.voices, str) else list(cfg.voices)
    if voices and task not in AV_TASKS:
        raise ValueError(f"voices={voices} were given for task={task}; voices are for task=t2av / ti2av")
    return [read_voice(path, rate=models.audio_vae.sample_rate) for path in voices]


def metadata(cfg, source: dict, prompt: str, seed: int, task: str, settings: Sampling, adapters, seconds: float):
    return {"prompt": prompt, "seed": seed, "task": task, "image": cfg.image, "last_image": cfg.last_image,
            "refs": None if cfg.refs is None else OmegaConf.to_container(cfg, resolve=True)["refs"],
            "voices": None if cfg.voices is None else OmegaConf.to_container(cfg, resolve=True)["voices"],
            "settings": dataclasses.asdict(settings), "checkpoint": source,
            "lora": [dataclasses.asdict(a) for a in adapters], "seconds_per_video": round(seconds, 3),
            "command": OmegaConf.to_container(cfg, resolve=True)}
