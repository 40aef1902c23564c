"""The joint flow objective of an audio-video model (Ovi-style twin towers): each modality on its own rectified-flow
path, at its own noise level, and one loss.

    x_v = (1 - s_v) v0 + s_v n_v,   x_a = (1 - s_a) a0 + s_a n_a
    loss_i = has_video_i * L_video_i + audio_weight * has_audio_i * L_audio_i

Noise levels: independent by default (s_v and s_a drawn separately from the same distribution), or shared
(s_a = s_v). Trainers of joint models found a shared level hurts the sound (ai-toolkit's voice training was traced
to it; LTX-2's trainer draws per modality: audio_marking.md §1.8-1.9). Clips without sound train the video tower
only, sound-only samples the audio tower only; a sample with neither is an error upstream (the data path never
yields one). Each modality's loss is the mean over its own elements, so the two scales do not depend on the
latent sizes."""

from __future__ import annotations

import torch

SIGMA_MODES = ("independent", "shared")


def modality_sigmas(u_video: torch.Tensor, u_audio: torch.Tensor, *, mode: str, icdf) -> tuple[torch.Tensor, ...]:
    """(sigma_video [B], sigma_audio [B]) from uniforms [B] through the sampler's inverse CDF `icdf` (so both
    follow the training distribution); mode "shared" uses u_video for both."""
    if mode not in SIGMA_MODES:
        raise ValueError(f"flow.audio_sigma={mode!r} is not allowed; allowed: {', '.join(SIGMA_MODES)}")
    sigma_video = icdf(u_video)
    return sigma_video, sigma_video if mode == "shared" else icdf(u_audio)


def mse_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """float32 [B]: the mean squared error of each sample over all its other dims (any latent layout)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return (pred.float() - target.float()).square().flatten(1).mean(dim=1)


def joint_loss(video_loss: torch.Tensor, audio_loss: torch.Tensor, *, has_video: torch.Tensor,
               has_audio: torch.Tensor, audio_weight: float) -> torch.Tensor:
    """float32 [B]: has_video * video_loss + audio_weight * has_audio * audio_loss (module docstring). The masks
    are applied with torch.where, so a NaN in an absent modality's loss cannot leak into the sum."""
    for name, t in (("video_loss", video_loss), ("audio_loss", audio_loss), ("has_video", has_video),
                    ("has_audio", has_audio)):
        if t.ndim != 1 or t.shape != video_loss.shape:
            raise ValueError(f"{name} must be [B] like video_loss {tuple(video_loss.shape)}; got {tuple(t.shape)}")
    if not audio_weight >= 0:
        raise ValueError(f"audio_weight={audio_weight!r} must be >= 0")
    zero = torch.zeros((), dtype=torch.float32, device=video_loss.device)
    video = torch.where(has_video.to(video_loss.device), video_loss.float(), zero)
    audio = torch.where(has_audio.to(video_loss.device), audio_loss.float(), zero)
    return video + audio_weight * audio

