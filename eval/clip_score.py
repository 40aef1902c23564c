"""CLIP score of videos against prompts (CLIPSIM / CLIP-T, eval.md §3.1).

score = mean over uniformly sampled frames of cos(CLIP_image(frame), CLIP_text(prompt)), the RAW cosine in
[-1, 1] as the video literature reports it with ViT-B/32 (MSR-VTT ~0.29-0.31). torchmetrics' CLIPScore is
100 x cos with the clamp max(mean, 0) over the whole set (eval.md §2.2); the two are not comparable.

The model is a local transformers CLIP folder (e.g. a saved openai/clip-vit-base-patch32): config.json,
weights, tokenizer files and preprocessor_config.json. Frames are preprocessed on tensors following that
config (eval.identity.PixelTransform); prompts go through the folder's tokenizer.
"""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from eval.identity import ImageEmbedder, check_videos, embed_frames, pooled_output, read_model_type

log = logging.getLogger(__name__)


def load_tokenizer(folder):
    """The folder's CLIP tokenizer. The files are checked first: transformers >= 5 builds an empty tokenizer
    (every word -> unk) from a folder that has none, which would score every prompt alike."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() and not all(
            (folder / name).is_file() for name in ("vocab.json", "merges.txt")):
        raise FileNotFoundError(f"{folder}: no CLIP tokenizer files (tokenizer.json, or vocab.json + "
                                f"merges.txt); save the CLIP processor or tokenizer into the folder")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


class ClipScorer:
    """`ClipScorer(folder).score(videos [B, 3, F, H, W] in [-1, 1], prompts) -> [B]` raw cosines."""

    def __init__(self, folder, *, device="cpu"):
        kind = read_model_type(folder)
        if kind != "clip":
            raise ValueError(f"{folder}/config.json: ClipScorer needs a CLIP model (model_type 'clip'), "
                             f"got model_type '{kind}'")
        self.images = ImageEmbedder(folder, device=device)  # holds the whole CLIPModel (both towers)
        self.model = self.images.model
        self.tokenizer = load_tokenizer(folder)
        # the tokenizer's model_max_length is often unset (1e30); the position table is the real limit (77)
        self.max_tokens = self.model.config.text_config.max_position_embeddings

    @torch.inference_mode()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """[P] prompts -> [P, D] unit-norm float32 on the CPU. Longer prompts are truncated, with a warning."""
        lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
        too_long = [i for i, n in enumerate(lengths) if n > self.max_tokens]
        if too_long:
            log.warning("prompts %s exceed CLIP's %d tokens and are truncated", too_long, self.max_tokens)
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.images.device)
        features = pooled_output(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                        attention_mask=tokens["attention_mask"]))
        return F.normalize(features.float(), dim=-1).cpu()

    def score(self, videos: torch.Tensor, prompts: list[str], *, frames: int | None = 8) -> torch.Tensor:
        """[B] float32 on the CPU: mean over `frames` uniformly spaced frames (None or >= F: every frame) of
        the cosine between each frame and its video's prompt. A mean, so frame order does not matter."""
        check_videos(videos)
        if isinstance(prompts, str) or len(prompts) != videos.shape[0]:
            raise ValueError(f"prompts must be a list of {videos.shape[0]} strings (one per video), "
                             f"got {prompts!r:.200}")
        frames_BND = embed_frames(videos, embedder=self.images, frames=frames)
        text_BD = self.text_embeddings(prompts)
        return (frames_BND * text_BD[:, None]).sum(-1).mean(1)

    def describe(self) -> dict:
        """What a sweep should log beside the numbers: backbone, preprocessing, and the text limit."""
        return {**self.images.describe(), "max_tokens": self.max_tokens}
