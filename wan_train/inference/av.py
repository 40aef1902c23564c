"""Video with sound from an audio-video model (Ovi): tasks t2av (from text) and ti2av (text and the first frame),
through the one denoising loop (inference.pipeline.denoise) with both towers stepping together.

Determinism: prompt i's noise comes from one CPU generator seeded with seed + i, the video's first (so its video
noise is that of a video-only model with the same seed), then the audio's. Lengths: the video has
settings.num_frames frames at settings.fps; the sound settings.audio_latent_length latents, or by default as
many whole latents as fit in the video's duration, so the two end within one latent (32 ms at 16 kHz) of each
other, inside one video frame."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from wan_train.inference.av_prompts import check_av_prompts
from wan_train.inference.joint import JointLayout
from wan_train.inference.pipeline import (
    AV_TASKS, WanModels, _batch, _device_of, check_request, condition, denoise, encode_text, latent_shape,
)
from wan_train.inference.presets import Sampling


@dataclass(frozen=True)
class AudioVideo:
    video: torch.Tensor  # [B, 3, F, H, W] float32 in [-1, 1] (decode=False: latents [B, Z, T, h, w])
    audio: torch.Tensor  # [B, T] float32 in [-1, 1] at sample_rate (decode=False: latents [B, Za, La])
    sample_rate: int


def encode_voices(models: WanModels, voices: Sequence[torch.Tensor], *, batch: int,
                  device: torch.device) -> list[torch.Tensor]:
    """Reference voices (mono waves [T]) -> clean latents [batch, Za, L_j], checked against the model's slots."""
    slots = models.dits[None].ovi_config.audio.references
    if len(voices) > slots:
        raise ValueError(f"{len(voices)} reference voices given; this model has "
                         + (f"{slots} reference-voice slots (@Video1..@Video{slots})" if slots else
                            "no reference-voice slots (train it with model.audio_references)"))
    out = []
    audio_vae = models.audio_vae
    for j, wave in enumerate(voices):
        if wave.ndim != 1 or wave.numel() < audio_vae.samples_per_latent:
            raise ValueError(f"voice {j + 1} (@Video{j + 1}): a mono wave [T] of at least "
                             f"{audio_vae.samples_per_latent} samples at {audio_vae.sample_rate} Hz; got "
                             f"{tuple(wave.shape)}")
        latents = audio_vae.encode(wave[None].float().to(_device_of(audio_vae))).float()
        out.append(latents.to(device).expand(batch, -1, -1))
    return out


def audio_latent_length(models: WanModels, settings: Sampling) -> int:
    """settings.audio_latent_length, or the whole audio latents in the video's duration num_frames / fps."""
    if settings.audio_latent_length is not None:
        return settings.audio_latent_length
    audio_vae = models.audio_vae
    samples = settings.num_frames / settings.fps * audio_vae.sample_rate
    return max(1, int(samples // audio_vae.samples_per_latent))


def joint_noise(video_shape: Sequence[int], audio_shape: Sequence[int], seeds: Sequence[int],
                layout: JointLayout) -> torch.Tensor:
    """[len(seeds), Nv + Na] float32 on the CPU: row i the video noise, then the audio noise, of one generator
    seeded with seeds[i]."""
    rows = []
    for seed in seeds:
        g = torch.Generator("cpu").manual_seed(int(seed))
        video = torch.randn(tuple(video_shape), generator=g)
        rows.append(layout.join(video[None], torch.randn(tuple(audio_shape), generator=g)[None])[0])
    return torch.stack(rows)


@torch.no_grad()
def generate_av(models: WanModels, prompts: str | Sequence[str], *, settings: Sampling, seed: int = 0,
                task: str = "t2av", images: torch.Tensor | None = None, device: torch.device | str | None = None,
                decode: bool = True, on_step: Callable[[int, int, str | None], None] | None = None,
                voices: Sequence[torch.Tensor] = ()) -> AudioVideo:
    """Videos and their sound for a batch of prompts (prompt i gets seed + i). images (task ti2av): the first
    frames [B or 1, 3, H, W] in [-1, 1] at settings.height x settings.width. voices: reference voices, one mono
    wave [T] at the audio autoencoder's rate per subject the prompts tag @Video1.. (models with reference-voice
    slots), guided with settings.reference_guidance_scale (inference.joint)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("generate_av() needs at least one prompt")
    if not models.has_audio:
        raise ValueError(f"task={task!r} needs an audio-video model (Ovi); this one can do {', '.join(models.tasks)}")
    if task not in AV_TASKS:
        raise ValueError(f"task={task!r}: an audio-video model does {', '.join(AV_TASKS)}")
    check_av_prompts(prompts)
    check_request(models, task, settings)
    dit = models.dits[None]
    if settings.slg_layer >= dit.config.num_layers:
        raise ValueError(f"slg_layer={settings.slg_layer}: this model has blocks 0..{dit.config.num_layers - 1} "
                         "(-1: skip none)")
    device = torch.device(device) if device is not None else _device_of(dit)
    b = len(prompts)
    images = _batch(images, b, settings, "images")
    if (task == "ti2av") != (images is not None):
        raise ValueError("task=ti2av needs images (the first frame); task=t2av takes none")
    guided = settings.guidance_scale != 1.0 or settings.audio_guidance_scale != 1.0
    context, negative = encode_text(models, prompts, settings.negative_prompt if guided else None, device=device)
    audio_negative = (encode_text(models, [settings.audio_negative_prompt], None, device=device)[0]
                      if guided else None)
    cond = condition(models, "ti2v" if task == "ti2av" else "t2v", images, None, settings, device=device)
    video_shape = latent_shape(models, settings)
    audio_shape = (dit.ovi_config.audio.out_dim, audio_latent_length(models, settings))
    layout = JointLayout((b, *video_shape), (b, *audio_shape))
    cond.joint, cond.audio_negative = layout, audio_negative
    cond.audio_refs = encode_voices(models, voices, batch=b, device=device) or None
    noise = joint_noise(video_shape, audio_shape, [seed + i for i in range(b)], layout)
    dit.to(device)
    state = denoise(models, noise, context, negative, cond, settings, device=device, on_step=on_step)
    video_latents, audio_latents = layout.split(state)
    if not decode:
        return AudioVideo(video_latents.cpu(), audio_latents.cpu(), models.audio_vae.sample_rate)
    vae_device, audio_device = _device_of(models.vae), _device_of(models.audio_vae)
    video = torch.cat([models.vae.decode(video_latents[i:i + 1].to(vae_device)).float().cpu() for i in range(b)])
    audio = torch.cat([models.audio_vae.decode(audio_latents[i:i + 1].to(audio_device)).float().cpu()
                       for i in range(b)])
    return AudioVideo(video, audio, models.audio_vae.sample_rate)
