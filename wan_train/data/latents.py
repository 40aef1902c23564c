"""The cached-latent source: samples written by `data_tools.cache_latents`, trained on with no VAE or text
encoder in memory. A sample is `<key>.safetensors` + `<key>.json`:

- `latents` [C, f, h, w]: the normalised VAE posterior mean of the clip (its bucket's size and frames);
- `context.{i}` [L_i, D]: the text encoder output of caption i, cut to its true length (the DiT pads to 512);
- optional `y` [4 + C, f, h, w] (I2V mask + conditioning latent) and `clip_fea` [257, 1280] (CLIP of frame 0);
- with --audio: `audio_latents` [C_a, L] (the audio autoencoder's latents of the clip's sound, wan_train.data.audio;
  zeros where the sample has none) and `has_audio` (bool, 0-d);
- json: `bucket` (Bucket.key), `captions`, `source`, `start` (clip start, seconds) and the encoders used.

Caption dropout swaps in the empty prompt's context, cached once per dataset as `empty_prompt.safetensors`."""

import json
import random
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors

from wan_train.data.buckets import Bucket, BucketTable
from wan_train.data.captions import caption_flags, choose_caption
from wan_train.data.errors import SampleError
from wan_train.data.stream import Planned, stack

EMPTY_PROMPT_FILE = "empty_prompt.safetensors"
OPTIONAL = ("y", "clip_fea")


@dataclass(frozen=True)
class LatentSource:
    empty_prompt: torch.Tensor | None = None  # [L, D]; needed when caption_dropout > 0
    caption_dropout: float = 0.0
    audio: bool = False  # yield audio_latents and has_audio (samples cached with --audio)

    def __post_init__(self):
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"data.caption_dropout={self.caption_dropout}: must be in [0, 1]")
        if self.caption_dropout > 0 and self.empty_prompt is None:
            raise ValueError(f"data.caption_dropout={self.caption_dropout} on cached latents needs the empty prompt's "
                             f"embedding ({EMPTY_PROMPT_FILE}, written by data_tools.cache_latents)")

    def plan(self, sample: dict, *, rng: random.Random) -> Planned:
        key = f"{sample.get('__url__', '?')}:{sample['__key__']}"
        for ext in ("json", "safetensors"):
            if ext not in sample:
                raise SampleError("missing_field", f"{key}: no .{ext} member")
        try:
            meta = json.loads(sample["json"])
            bucket = Bucket.from_key(meta["bucket"])
            captions = meta["captions"]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
            raise SampleError("bad_metadata", f"{key}: latent .json needs 'bucket' and 'captions' ({error})") from None
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise SampleError("bad_metadata", f"{key}: latent .json 'captions' must be a non-empty list of strings")
        caption = choose_caption(len(captions), dropout=self.caption_dropout, rng=rng)
        return Planned(key=sample["__key__"], url=sample.get("__url__", ""), bucket=bucket, sample=sample,
                       choice={"caption": caption, "prompt": "" if caption is None else captions[caption], "name": key},
                       flags=caption_flags(captions, key=key))

    def load(self, planned: Planned, *, rng: random.Random) -> dict:
        name, caption = planned.choice["name"], planned.choice["caption"]
        try:
            tensors = load_safetensors(planned.sample["safetensors"])
        except Exception as error:  # safetensors raises SafetensorError / ValueError on truncated bytes
            raise SampleError("undecodable", f"{name}: unreadable .safetensors ({error})") from None
        context_key = None if caption is None else f"context.{caption}"
        if "latents" not in tensors or (context_key is not None and context_key not in tensors):
            raise SampleError("missing_field", f"{name}: .safetensors lacks 'latents' or '{context_key}'")
        check_latents(tensors, planned.bucket, key=name)
        item = {
            "latents": tensors["latents"],
            "context": self.empty_prompt if context_key is None else tensors[context_key],
            "prompt": planned.choice["prompt"],
            "key": planned.key,
            "url": planned.url,
        }
        item.update({k: tensors[k] for k in OPTIONAL if k in tensors})
        if self.audio:
            item.update(audio_latents(tensors, key=name))
            if not item["has_audio"]:
                planned.flags.append(("no_audio", f"{name}: cached without sound: trained with has_audio False"))
        return item

    def collate(self, items: list[dict]) -> dict:
        lengths = torch.tensor([item["context"].shape[0] for item in items])
        context = torch.zeros(len(items), int(lengths.max()), items[0]["context"].shape[1],
                              dtype=items[0]["context"].dtype)
        for i, item in enumerate(items):
            context[i, : lengths[i]] = item["context"]
        batch = {"latents": stack(items, "latents"), "context": context, "context_lengths": lengths,
                 "prompt": [item["prompt"] for item in items], "key": [item["key"] for item in items],
                 "url": [item["url"] for item in items]}
        batch.update({k: stack(items, k) for k in OPTIONAL if all(k in item for item in items)})
        if self.audio:
            batch.update(audio_latents=stack(items, "audio_latents"),
                         has_audio=torch.tensor([item["has_audio"] for item in items]))
        return batch


def audio_latents(tensors: dict[str, torch.Tensor], *, key: str) -> dict:
    """audio_latents [C, L] and has_audio (bool) of a sample cached with --audio."""
    if "audio_latents" not in tensors or "has_audio" not in tensors:
        raise SampleError("missing_field", f"{key}: .safetensors lacks 'audio_latents' / 'has_audio' (data.audio "
                                           "needs latents cached with data_tools.cache_latents --audio)")
    latents = tensors["audio_latents"]
    if latents.ndim != 2 or tensors["has_audio"].numel() != 1:
        raise SampleError("bad_metadata", f"{key}: audio_latents {tuple(latents.shape)} is not [C, L], or has_audio "
                                          "is not one flag")
    return {"audio_latents": latents, "has_audio": bool(tensors["has_audio"])}


def check_latents(tensors: dict[str, torch.Tensor], bucket: Bucket, *, key: str) -> None:
    """A cached sample must fit its bucket (so that a batch stacks: [C, f, h, w] with f the bucket's latent frames
    and h, w its size over one spatial stride) and hold finite numbers only (one NaN would make every loss after
    it NaN)."""
    latents = tensors["latents"]
    frames = (bucket.frames - 1) // BucketTable.temporal_stride + 1
    stride = bucket.height // latents.shape[-2] if latents.ndim == 4 and latents.shape[-2] else 0
    fits = (latents.ndim == 4 and latents.shape[1] == frames and stride > 0
            and latents.shape[-2] * stride == bucket.height and latents.shape[-1] * stride == bucket.width)
    if not fits:
        raise SampleError("bad_metadata", f"{key}: latents {tuple(latents.shape)} do not fit its bucket {bucket.key} "
                                          f"([C, {frames}, H/s, W/s])")
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        raise SampleError("undecodable", f"{key}: .safetensors holds NaN or infinite values in {bad[:5]}")
