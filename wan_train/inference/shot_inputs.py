"""What a multi-shot video gives the DiT and the VAE: one text context holding the global caption and each
shot's caption (each trimmed to its own length, so every shot's words fit in text_len), the ShotLayout that says
which caption and which latent frames belong to which shot, and the VAE run shot by shot (it is causal over time:
encoding or decoding across a cut would smear the two shots into each other's first latent frames).

Used by generate() (wan_train.inference.pipeline) and, for training, by the same functions on the shots of a
sample, so a shot's tokens read what they were trained to read."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wan_train.inference.shots import ShotPlan, shot_captions
from wan_train.models import ShotLayout


def latent_frames(pixel_frames: Sequence[int], *, temporal_compression: int) -> list[int]:
    """Latent frames of shots of these pixel frames (each 1 + 4k): 1 + (f - 1) / 4 each."""
    for f in pixel_frames:
        if (f - 1) % temporal_compression:
            raise ValueError(f"a shot of {f} frames: each shot is 1 + {temporal_compression}k frames")
    return [1 + (f - 1) // temporal_compression for f in pixel_frames]


def shot_context(text_encoder, plans: Sequence[ShotPlan], *, text_len: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [B, S, D] float32, text_shots [B, S] int64): per plan, the global caption's tokens (-1) then each
    shot's caption's tokens (its index), zero-padded (-1) to the longest plan of the batch."""
    contexts, ids = [], []
    for plan in plans:
        context, lengths = text_encoder.encode([plan.global_caption, *shot_captions(plan)])
        pieces = [context[j, : int(lengths[j])] for j in range(len(lengths))]
        owner = torch.cat([torch.full((int(n),), j - 1, dtype=torch.int64) for j, n in enumerate(lengths)])
        if len(owner) > text_len:
            raise ValueError(f"the global caption and {len(plan.shots)} shot captions take {len(owner)} tokens; the "
                             f"model reads at most {text_len}: shorten them")
        contexts.append(torch.cat(pieces).float())
        ids.append(owner)
    length = max(len(o) for o in ids)
    context = torch.zeros(len(plans), length, contexts[0].shape[-1])
    text_shots = torch.full((len(plans), length), -1, dtype=torch.int64)
    for i, (c, o) in enumerate(zip(contexts, ids, strict=True)):
        context[i, : len(o)], text_shots[i, : len(o)] = c.cpu(), o
    return context.to(device), text_shots.to(device)


def shot_layout(latents_per_shot: Sequence[int], text_shots: torch.Tensor) -> ShotLayout:
    """The layout of a batch whose videos share the shots' latent frames."""
    frames = torch.repeat_interleave(torch.arange(len(latents_per_shot)), torch.tensor(list(latents_per_shot)))
    return ShotLayout(frames.to(text_shots.device).expand(text_shots.shape[0], -1), text_shots)


def encode_shots(vae, video: torch.Tensor, pixel_frames: Sequence[int]) -> torch.Tensor:
    """video [B, 3, sum f, H, W] -> latents [B, Z, sum (1 + (f - 1) / 4), h, w], each shot encoded on its own."""
    bounds = torch.tensor([0, *pixel_frames]).cumsum(0).tolist()
    return torch.cat([vae.encode(video[:, :, a:b]) for a, b in zip(bounds, bounds[1:], strict=False)], dim=2)


def decode_shots(vae, latents: torch.Tensor, latents_per_shot: Sequence[int]) -> torch.Tensor:
    """latents [B, Z, sum k, h, w] -> video [B, 3, sum (1 + 4 (k - 1)), H, W], each shot decoded on its own."""
    bounds = torch.tensor([0, *latents_per_shot]).cumsum(0).tolist()
    return torch.cat([vae.decode(latents[:, :, a:b]) for a, b in zip(bounds, bounds[1:], strict=False)], dim=2)
