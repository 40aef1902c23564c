"""The audio-video state of the denoising loop: the video latents [B, Zv, T, h, w] and the audio latents
[B, Za, La] of a batch travel as one flat tensor [B, Nv + Na], so the stateless solvers step both modalities
together (one sigma grid, as in Ovi's engine, whose two schedulers are copies), and the guidance of each
modality is its own (Ovi's CFG per tower, ovi_facts.md §4):

    v_video = v_video(neg) + g_video (v_video(pos) - v_video(neg))
    v_audio = v_audio(neg) + g_audio (v_audio(pos) - v_audio(neg))

where the conditional pass gives both towers the prompt, and the unconditional pass gives the video tower the
negative prompt, the audio tower the audio negative prompt, and skips block ``slg_layer`` in both towers.

With reference voices (``audio_refs``, models with reference-voice slots) the guidance is over the reference as
well as the text, as for R2V (inference.pipeline): three passes, the unconditional one without the voices (zero
latents), the second with the voices and the negative prompts, the third with both,

    v = v(neg, no voice) + g_ref (v(neg, voice) - v(neg, no voice)) + g (v(pos, voice) - v(neg, voice))

per modality (g: guidance_scale for the video, audio_guidance_scale for the sound; g_ref:
reference_guidance_scale)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wan_train.models import OviDiT


@dataclass(frozen=True)
class JointLayout:
    video: tuple[int, ...]  # [B, Zv, T, h, w]
    audio: tuple[int, ...]  # [B, Za, La]

    @property
    def video_numel(self) -> int:
        return math.prod(self.video[1:])

    def split(self, x_BN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the video and audio parts of a flat state [B, Nv + Na] (writes go through to x)."""
        n = self.video_numel
        return x_BN[:, :n].view(self.video), x_BN[:, n:].view(self.audio)

    def join(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return torch.cat([video.flatten(1), audio.flatten(1)], dim=1)


def joint_velocity(dit: OviDiT, layout: JointLayout, x_BN: torch.Tensor, t_video: torch.Tensor,
                   t_audio: torch.Tensor, context: torch.Tensor, negative: torch.Tensor | None,
                   audio_negative: torch.Tensor | None, *, video_scale: float, audio_scale: float,
                   slg_layer: int, audio_refs: list[torch.Tensor] | None = None,
                   reference_scale: float = 1.0) -> torch.Tensor:
    """The guided velocity of the flat state (module docstring); scales of 1 (or no negatives) run the
    conditional pass only."""
    video, audio = layout.split(x_BN)
    b = video.shape[0]
    v_video, v_audio = dit(video, audio, t_video, t_audio, context, audio_refs=audio_refs)
    guided = negative is not None and audio_negative is not None
    if guided and (video_scale != 1.0 or audio_scale != 1.0 or (audio_refs and reference_scale != 1.0)):
        skip = (slg_layer,) if slg_layer >= 0 else ()
        negatives = {"audio_context": audio_negative.expand(b, -1, -1), "skip_blocks": skip}
        u_video, u_audio = dit(video, audio, t_video, t_audio, negative.expand(b, -1, -1), **negatives,
                               audio_refs=audio_refs)
        if audio_refs:  # guidance over the voices too (module docstring)
            n_video, n_audio = dit(video, audio, t_video, t_audio, negative.expand(b, -1, -1), **negatives,
                                   audio_refs=[torch.zeros_like(r) for r in audio_refs])
            v_video = n_video + reference_scale * (u_video - n_video) + video_scale * (v_video - u_video)
            v_audio = n_audio + reference_scale * (u_audio - n_audio) + audio_scale * (v_audio - u_audio)
        else:
            v_video = u_video + video_scale * (v_video - u_video)
            v_audio = u_audio + audio_scale * (v_audio - u_audio)
    return layout.join(v_video.float(), v_audio.float())
