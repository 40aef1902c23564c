"""Image-embedding metrics on videos: CLIP-I / DINO-I reference similarity (eval.md §4.2), VBench subject /
background consistency and temporal flickering (eval.md §3.2, VBench @45e79ec).

Shapes: videos [B, 3, F, H, W] and reference images [B or 1, 3, H', W'], pixels in [-1, 1]. Embeddings are
[N, D] and L2-normalised, so a dot product is a cosine. Every metric returns float32 [B] on the CPU.

The backbone is a transformers folder saved with `save_pretrained` (config.json, weights, and the image
processor config: preprocessor_config.json, or processor_config.json as transformers >= 5 saves a processor);
it is read with local_files_only, so nothing downloads.
"""

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, CLIPModel, Dinov2Model, ViTModel

from wan_train.models import CheckpointError
from wan_train.models.checkpoint.pickles import why

log = logging.getLogger(__name__)

# PIL resampling codes (the `resample` of a preprocessor_config.json) -> torch interpolate modes.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# Tolerance on the [-1, 1] pixel range: decoded-then-resized videos overshoot a little; [0, 1] or [0, 255]
# inputs (the usual mistake) do not pass.
_RANGE_SLACK = 0.05


def pooled_output(out) -> torch.Tensor:
    """transformers < 5 returns the projected features as a tensor, >= 5 as the output's pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _clip_image_features(model, pixels):
    # visual_projection(post_layernorm(CLS)): the embedding CLIP compares with text (CLIP-I, CLIPSIM)
    return pooled_output(model.get_image_features(pixel_values=pixels))


def _cls_token(model, pixels):
    # DINO / DINOv2 image feature = the CLS token after the final LayerNorm (DINO's VisionTransformer.forward)
    return model(pixel_values=pixels).last_hidden_state[:, 0]


# config.json model_type -> (model class, feature function, from_pretrained kwargs). ViT is DINO v1 in HF
# layout (facebook/dino-vitb16); its pooler (dense + tanh) is not part of DINO, so it is not built.
BACKBONES = {
    "clip": (CLIPModel, _clip_image_features, {}),
    "dinov2": (Dinov2Model, _cls_token, {}),
    "vit": (ViTModel, _cls_token, {"add_pooling_layer": False}),
}


def read_model_type(folder) -> str:
    """The `model_type` of a transformers model folder, with a clear error when the folder is not one."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise FileNotFoundError(f"model folder {folder} {what}; expected a transformers folder saved with "
                                f"save_pretrained (one of model_type {sorted(BACKBONES)})")
    data = json.loads(config.read_text())
    if "model_type" not in data:
        raise ValueError(f"{config}: no 'model_type' key; expected one of {sorted(BACKBONES)}")
    return data["model_type"]


def load_pretrained(cls, folder, **kwargs):
    """`cls.from_pretrained` from a local folder that refuses to fill missing weights at random; a
    pytorch_model.bin is read weights-only (transformers does so), one holding more than weights is refused."""
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{folder}: its PyTorch weights file {why(e)}") from None
    missing = sorted(info["missing_keys"])
    if missing:
        raise ValueError(f"{folder}: the weights lack {len(missing)} tensors that {cls.__name__} needs "
                         f"(e.g. {missing[:3]}); refusing to initialise them at random")
    return model


def _size_field(size, key):
    # transformers < 5 keeps sizes as dicts, >= 5 as SizeDict objects
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


@dataclass(frozen=True)
class PixelTransform:
    """The folder's image-processor recipe (resize, centre crop, normalise) done on tensors, so frames never
    round-trip through PIL. Pixels enter as [-1, 1] and are mapped to [0, 1], which is where the processor's
    `do_rescale` (x / 255) puts uint8 images."""

    folder: str
    shortest_edge: int | None  # resize the short side to this, keeping aspect (int-truncated long side)
    resize_hw: tuple[int, int] | None  # or resize to exactly (height, width)
    crop_hw: tuple[int, int] | None  # centre crop after resizing
    mode: str  # torch interpolate mode for the processor's PIL resample
    mean: tuple[float, float, float] | None  # None: the processor does not normalise
    std: tuple[float, float, float] | None

    @classmethod
    def from_folder(cls, folder) -> "PixelTransform":
        try:
            proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{folder}: no usable image-processor config (preprocessor_config.json or "
                                    f"processor_config.json); save the model's image processor or processor "
                                    f"into it with save_pretrained") from e
        resample = int(proc.resample)
        if resample not in _RESAMPLE:
            raise ValueError(f"{folder}: image processor resample={resample} is not supported; "
                             f"allowed: {sorted(_RESAMPLE)} (PIL nearest, bilinear, bicubic)")
        shortest = resize_hw = crop_hw = None
        if proc.do_resize:
            shortest = _size_field(proc.size, "shortest_edge")
            height, width = _size_field(proc.size, "height"), _size_field(proc.size, "width")
            if shortest is None and height is not None and width is not None:
                resize_hw = (int(height), int(width))
            elif shortest is None:
                raise ValueError(f"{folder}: image processor size={proc.size} is not supported; "
                                 f"expected {{'shortest_edge': n}} or {{'height': h, 'width': w}}")
        if getattr(proc, "do_center_crop", None):
            crop_hw = (int(_size_field(proc.crop_size, "height")), int(_size_field(proc.crop_size, "width")))
        normalise = proc.do_normalize
        return cls(folder=str(folder), shortest_edge=None if shortest is None else int(shortest),
                   resize_hw=resize_hw, crop_hw=crop_hw, mode=_RESAMPLE[resample],
                   mean=tuple(proc.image_mean) if normalise else None,
                   std=tuple(proc.image_std) if normalise else None)

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_hw is not None:
            return self.resize_hw
        if self.shortest_edge is None:
            return height, width
        # transformers' get_resize_output_image_size(default_to_square=False): long side int-truncated
        long = int(self.shortest_edge * max(height, width) / min(height, width))
        return (self.shortest_edge, long) if height <= width else (long, self.shortest_edge)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, 3, h, w] float32, ready for the model."""
        x = (images.float() + 1) / 2
        size = self.resized_hw(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):  # PIL returns a copy when the size is unchanged
            # antialias matches PIL's area-aware down-sampling; clamp matches its uint8 clipping of overshoot
            x = F.interpolate(x, size=size, mode=self.mode, antialias=self.mode != "nearest").clamp(0, 1)
        if self.crop_hw is not None:
            (h, w), (ch, cw) = x.shape[-2:], self.crop_hw
            if ch > h or cw > w:
                raise ValueError(f"{self.folder}: image processor crop {self.crop_hw} is larger than "
                                 f"the resized frame {(h, w)}")
            top, left = (h - ch) // 2, (w - cw) // 2  # transformers' center_crop offsets
            x = x[..., top:top + ch, left:left + cw]
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
            x = (x - mean) / std
        return x


class ImageEmbedder:
    """Unit-norm image embeddings from a local CLIP (image tower), DINOv2 or DINO-ViT folder.

    `embedder(images [N, 3, H, W] in [-1, 1]) -> [N, D]` float32 on the CPU; frames are resized on `device`
    in chunks of `batch_size` images.
    """

    def __init__(self, folder, *, device="cpu", batch_size: int = 64):
        self.folder = Path(folder)
        self.kind = read_model_type(folder)
        if self.kind not in BACKBONES:
            raise ValueError(f"{self.folder}/config.json: model_type '{self.kind}' is not an image backbone "
                             f"we embed with; allowed: {sorted(BACKBONES)}")
        cls, self._features, kwargs = BACKBONES[self.kind]
        self.device = torch.device(device)
        self.model = load_pretrained(cls, folder, **kwargs).to(self.device).eval().requires_grad_(False)
        self.transform = PixelTransform.from_folder(folder)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        out = []
        for chunk in images.split(self.batch_size):
            pixels = self.transform(chunk.to(self.device))
            out.append(F.normalize(self._features(self.model, pixels).float(), dim=-1).cpu())
        return torch.cat(out)

    def describe(self) -> dict:
        """What a sweep should log beside the numbers (eval.md §3.1: always report the backbone)."""
        return {"folder": str(self.folder), "model_type": self.kind, **{
            k: v for k, v in vars(self.transform).items() if k != "folder"}}


# ------------------------------------------------------------------------------------------ frames and checks

def check_videos(videos: torch.Tensor, *, name: str = "videos") -> None:
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"{name} must be [B, 3, F, H, W], got {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise ValueError(f"{name} must be floating point in [-1, 1], got {videos.dtype}")
    low, high = videos.aminmax()
    if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ValueError(f"{name} must hold pixels in [-1, 1], got values in [{low:.3g}, {high:.3g}]")


def frame_indices(num_frames: int, frames: int | None) -> list[int]:
    """`frames` uniformly spaced indices over [0, num_frames - 1], as np.linspace(..., dtype=int) in the
    ConsisID / OpenS2V scripts (truncation); every frame when frames is None or >= num_frames."""
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be >= 1 or None (every frame), got {frames}")
    if frames is None or frames >= num_frames:
        return list(range(num_frames))
    if frames == 1:
        return [0]
    return [int(i * (num_frames - 1) / (frames - 1)) for i in range(frames)]


def sample_frames(videos: torch.Tensor, *, frames: int | None) -> torch.Tensor:
    """[B, 3, F, H, W] -> [B, N, 3, H, W], N = len(frame_indices(F, frames))."""
    index = torch.tensor(frame_indices(videos.shape[2], frames), device=videos.device)
    return videos.index_select(2, index).transpose(1, 2)


def embed_frames(videos: torch.Tensor, *, embedder: ImageEmbedder, frames: int | None) -> torch.Tensor:
    """[B, 3, F, H, W] -> [B, N, D] unit-norm frame embeddings."""
    clips = sample_frames(videos, frames=frames)
    return embedder(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])


# ------------------------------------------------------------------------------------------------- metrics

def identity_similarity(videos: torch.Tensor, references: torch.Tensor, *, embedder: ImageEmbedder,
                        frames: int | None = 8) -> torch.Tensor:
    """CLIP-I / DINO-I (eval.md §4.2): mean over sampled frames of cos(frame, reference) -> [B] in [-1, 1].

    The raw cosine, not clamped: the max(0, cos) of eval.md §4.1 belongs to the face metrics. references are
    [B, 3, H', W'] (one per video) or [1, 3, H', W'] (shared); their size may differ from the frames'.
    """
    check_videos(videos)
    if references.ndim != 4 or references.shape[1] != 3 or references.shape[0] not in (1, videos.shape[0]):
        raise ValueError(f"references must be [B or 1, 3, H, W] with B = {videos.shape[0]}, "
                         f"got {tuple(references.shape)}")
    check_videos(references[:, :, None], name="references")
    frames_BND = embed_frames(videos, embedder=embedder, frames=frames)
    refs_BD = embedder(references)
    return (frames_BND * refs_BD[:, None]).sum(-1).mean(1)


def subject_consistency(videos: torch.Tensor, *, embedder: ImageEmbedder, frames: int | None = None) -> torch.Tensor:
    """VBench subject consistency (DINO embedder) or background consistency (CLIP embedder) -> [B] in [0, 1].

    For frame i >= 1: (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2, averaged over i. VBench uses
    every frame (frames=None) and reports the frame-weighted mean over videos, which equals the mean of this
    [B] when all videos have the same length. VBench resizes the DINO input's short side to 224 without a
    crop; here the folder's own processor config decides the resize.
    """
    check_videos(videos)
    f_BND = embed_frames(videos, embedder=embedder, frames=frames)
    if f_BND.shape[1] < 2:
        raise ValueError(f"subject_consistency needs >= 2 frames, got {f_BND.shape[1]} "
                         f"(video frames {videos.shape[2]}, frames={frames})")
    to_previous = (f_BND[:, 1:] * f_BND[:, :-1]).sum(-1).clamp(min=0)
    to_first = (f_BND[:, 1:] * f_BND[:, :1]).sum(-1).clamp(min=0)
    return ((to_previous + to_first) / 2).mean(1)


@torch.no_grad()
def temporal_flickering(videos: torch.Tensor) -> torch.Tensor:
    """VBench temporal flickering -> [B] in [0, 1], 1 = no change between frames.

    (255 - MAE) / 255 with MAE the mean absolute difference of consecutive frames in 0-255 units over all
    pixels and channels; in [-1, 1] units that is 1 - mean|x_{i+1} - x_i| / 2. VBench reads uint8 frames;
    a video decoded from uint8 gives the same number here (no re-quantisation). Meant for static-scene prompts.
    """
    check_videos(videos)
    if videos.shape[2] < 2:
        raise ValueError(f"temporal_flickering needs >= 2 frames, got {videos.shape[2]}")
    mae = (videos[:, :, 1:].float() - videos[:, :, :-1].float()).abs().mean(dim=(1, 2, 3, 4))
    return (1 - mae / 2).cpu()
