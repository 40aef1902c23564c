"""Random-weight stand-ins for the eval networks, written in the real formats, so the whole eval path (loading,
preprocessing, metrics, sweeps, W&B tables) runs with nothing downloaded:

    OUT/clip/       a tiny CLIPModel + CLIP tokenizer + image processor (save_pretrained, like a local
                    openai/clip-vit-base-patch32)           -> metrics.clip / metrics.image_model
    OUT/dinov2/     a tiny Dinov2Model + its image processor -> metrics.image_model
    OUT/i3d/rgb_imagenet.pt   a full-size InceptionI3d state dict in piergiaj's layout -> metrics.fvd.i3d
    OUT/syncnet/syncnet_v2.model   a full-size SyncNet state dict in syncnet_python's layout -> metrics.syncnet

The numbers they give measure nothing about video quality; they show the plumbing works. For real numbers
point the same keys at real weights (eval.md §0).

    python -m data_tools.make_eval_models --output models/random
"""

import argparse
import math
import sys
from pathlib import Path

import torch

from data_tools.common import atomic_path, console, summary
from data_tools.random_weights import randomize_, randomize_i3d_

IMAGE_SIZE = 32  # pixels per side the tiny image towers see (ViT-B/32 sees 224)


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer over the 256 byte-level symbols (plain and word-final), no merges: every word is
    spelled out letter by letter, which is all a random model needs."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in sorted(ByteLevel.alphabet()):
            vocab[symbol + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def write_clip(folder: str | Path, *, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=40, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16)
    randomize_(CLIPModel(config), seed).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_dinov2(folder: str | Path, *, seed: int = 0) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = Path(folder)
    config = Dinov2Config(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, mlp_ratio=2)
    randomize_(Dinov2Model(config), seed).save_pretrained(folder)
    # the DINOv2 recipe scaled down: short side 256 -> crop 224 becomes 36 -> 32
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def write_i3d(path: str | Path, *, seed: int = 0) -> Path:
    """piergiaj's rgb_imagenet.pt layout (a plain state dict; BatchNorm eps 1e-3), full size (12.7M parameters)."""
    from eval.i3d import InceptionI3d

    path = Path(path)
    with atomic_path(path) as temp:
        torch.save(randomize_i3d_(InceptionI3d(), seed).state_dict(), temp)
    return path


def write_syncnet(path: str | Path, *, seed: int = 0) -> Path:
    """syncnet_python's syncnet_v2.model layout: a state dict of its `S` (13.6M parameters) without
    num_batches_tracked, saved in torch's legacy (pre-1.6, non-zip) format, as a file of that age would be (the
    loader reads both formats; the real file was not inspected here). He-scaled weights and BatchNorm
    statistics away from 0 / 1, so a mis-mapped key changes the embeddings; the first convolutions are scaled to
    their inputs' units (pixels 0-255, MFCC tens), so both embeddings have similar sizes and distances depend on
    both streams."""
    from eval.syncnet import SyncNet

    path = Path(path)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in SyncNet().state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if t.ndim >= 2:
            value = torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel())
        elif name.endswith("running_var"):
            value = 0.5 + torch.rand(t.shape, generator=g)
        elif name.endswith("weight"):  # BatchNorm scale
            value = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        else:  # biases, running means
            value = 0.1 * torch.randn(t.shape, generator=g)
        state[name] = value
    state["netcnnlip.0.weight"] /= 128.0
    state["netcnnaud.0.weight"] /= 20.0
    with atomic_path(path) as temp:
        torch.save(state, temp, _use_new_zipfile_serialization=False)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.make_eval_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True,
                        help="folder for clip/, dinov2/, i3d/rgb_imagenet.pt and syncnet/syncnet_v2.model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.output)
    written = {"CLIP": write_clip(out / "clip", seed=args.seed),
               "DINOv2": write_dinov2(out / "dinov2", seed=args.seed + 1),
               "I3D": write_i3d(out / "i3d" / "rgb_imagenet.pt", seed=args.seed + 2),
               "SyncNet": write_syncnet(out / "syncnet" / "syncnet_v2.model", seed=args.seed + 3)}
    summary("random-weight eval models (plumbing only: their numbers do not measure quality)",
            {name: str(path) for name, path in written.items()})
    console.print(f"use them with: metrics.clip={out}/clip metrics.image_model={out}/dinov2 "
                  f"metrics.fvd.i3d={out}/i3d/rgb_imagenet.pt metrics.syncnet={out}/syncnet/syncnet_v2.model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
