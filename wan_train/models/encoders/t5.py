"""The umT5-XXL text encoder of every Wan model, as a ``transformers.UMT5EncoderModel`` (wan_arch.md §3.1).

Legend: B prompts, S = text_len token positions, D = d_model (4096 for umT5-XXL).

    encoder = load_text_encoder("Wan2.1-T2V-14B/models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1-T2V-14B/google/umt5-xxl")
    context_BSD, lengths_B = encoder.encode(["a cat on a mat", "rain over a neon city"])

Weights come from the official Wan ``.pth`` (keys renamed to the HF layout, size read from the tensor shapes) or
from a Hugging Face folder (``google/umt5-xxl`` or a saved ``UMT5EncoderModel``). ``encode`` follows the official
``T5EncoderModel.__call__``: clean, pad to ``text_len`` with EOS, run with the padding mask, and keep only the true
tokens (EOS included); here the tail is zeroed instead of cut, which is what the DiT pads it back to anyway.
"""

from __future__ import annotations

import html
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import ftfy
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.pickles import why
from wan_train.models.checkpoint.state_dict import (
    MAX_LISTED, assign_parameters, check_state_dict, read_state_dict, report,
)

# UMT5Config kwargs of the official umT5-XXL encoder (W21:t5.py umt5_xxl); "gated-gelu" is gelu_new (tanh approx.)
UMT5_XXL = MappingProxyType({
    "vocab_size": 256384, "d_model": 4096, "num_heads": 64, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
})
# official key -> HF key; per-block entries are suffixes of blocks.{i}. -> encoder.block.{i}.
_TOP_KEYS = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    **{f"attn.{p}.weight": f"layer.0.SelfAttention.{p}.weight" for p in "qkvo"},
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_TIED_KEY = "encoder.embed_tokens.weight"  # the same tensor as shared.weight
_IGNORED_HF_PREFIXES = ("decoder.", "lm_head.")  # a full UMT5ForConditionalGeneration folder: its encoder part


def clean_prompt(text: str) -> str:
    """The official Wan prompt cleaning: ftfy, HTML entities unescaped twice (``&amp;amp;`` -> ``&``), whitespace
    runs collapsed to one space."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def load_umt5_encoder(path: str | Path, *, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> UMT5EncoderModel:
    """The frozen encoder (eval mode, no grads) from an official ``.pth`` file or a Hugging Face folder.

    dtype: cast floating weights to it (None keeps the stored dtype: bf16 for the official file); a HF folder
    loaded in float16 keeps ``wo`` in float32, as transformers does. device: where the weights land (default CPU).
    """
    path = Path(path)
    if path.is_file():
        model = _load_official(path, dtype=dtype, device=device)
    elif (path / "config.json").is_file():
        model = _load_hf_folder(path, dtype=dtype).to(device or "cpu")
    else:
        raise CheckpointError(f"{path}: expected the official umT5 .pth file or a Hugging Face folder with "
                              f"config.json ({'folder without config.json' if path.is_dir() else 'not found'})")
    return model.eval().requires_grad_(False)


def load_umt5_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The umT5 tokenizer from a local folder (``google/umt5-xxl/`` in the Wan repos)."""
    if not Path(path).is_dir():
        raise CheckpointError(f"{path}: tokenizer folder not found (the Wan repos ship it as google/umt5-xxl/)")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load a tokenizer from this folder ({e})") from None


class WanTextEncoder:
    """umT5 encoder + tokenizer with the official Wan prompt semantics. A plain object, not an ``nn.Module``, so
    a frozen 5.7 B-parameter encoder never lands in a training module's state dict."""

    def __init__(self, model: UMT5EncoderModel, *, tokenizer: PreTrainedTokenizerBase, text_len: int = 512) -> None:
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the encoder's vocabulary of "
                             f"{model.config.vocab_size}: they do not belong together")
        self.model, self.tokenizer, self.text_len = model, tokenizer, text_len

    @classmethod
    def load(cls, encoder_path: str | Path, tokenizer_path: str | Path, *, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None, text_len: int = 512) -> WanTextEncoder:
        model = load_umt5_encoder(encoder_path, dtype=dtype, device=device)
        return cls(model, tokenizer=load_umt5_tokenizer(tokenizer_path), text_len=text_len)

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    def to(self, *args, **kwargs) -> WanTextEncoder:
        self.model.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """context [B, text_len, D] (zero at and past each prompt's length) and lengths [B] int64 (tokens incl.
        EOS, at most text_len), on the model's device; context in the model's dtype."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        batch = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len,
                               truncation=True, add_special_tokens=True, padding_side="right", return_tensors="pt")
        ids_BS, mask_BS = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        lengths_B = mask_BS.sum(dim=1, dtype=torch.int64)
        context_BSD = self.model(input_ids=ids_BS, attention_mask=mask_BS).last_hidden_state
        past_end_BS = torch.arange(self.text_len, device=self.device) >= lengths_B[:, None]
        return context_BSD.masked_fill(past_end_BS[..., None], 0).to(self.dtype), lengths_B


load_text_encoder = WanTextEncoder.load


# ------------------------------------------------------------------------------------------------ loading


def _load_official(path: Path, *, dtype: torch.dtype | None,
                   device: torch.device | str | None) -> UMT5EncoderModel:
    state = read_state_dict(path)
    config = _config_from_shapes(state, path)
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = [*_TOP_KEYS, *(f"blocks.{i}.{s}" for i in range(config.num_layers) for s in _BLOCK_KEYS)]
    check_state_dict({k: shapes[_hf_key(k)] for k in names}, {k: tuple(v.shape) for k, v in state.items()},
                     where=str(path), what="the umT5 encoder its tensor shapes describe")
    # always a copy (device given): a tensor left on the memory map keeps the whole file mapped
    assign_parameters(model, {_hf_key(k): t for k, t in state.items()}, dtype=dtype, device=device or "cpu")
    model.encoder.embed_tokens.weight = model.shared.weight  # tied: the same tensor
    return model


def _config_from_shapes(state: dict[str, torch.Tensor], path: Path) -> UMT5Config:
    """The size from the tensors, so any official-layout file (the 5.7 B model or a tiny test one) loads."""
    try:
        vocab, d_model = state["token_embedding.weight"].shape
        num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        d_kv = state["blocks.0.attn.q.weight"].shape[0] // num_heads
        d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"{path}: not an official umT5 encoder file: no tensor {e} (first keys: "
                              f"{sorted(state)[:MAX_LISTED]})") from None
    num_layers = 1 + max(int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    return UMT5Config(**{**UMT5_XXL, "vocab_size": vocab, "d_model": d_model, "num_heads": num_heads, "d_kv": d_kv,
                         "d_ff": d_ff, "num_layers": num_layers, "relative_attention_num_buckets": num_buckets})


def _hf_key(official: str) -> str:
    if official in _TOP_KEYS:
        return _TOP_KEYS[official]
    _, i, suffix = official.split(".", 2)
    return f"encoder.block.{i}.{_BLOCK_KEYS[suffix]}"


def _load_hf_folder(folder: Path, *, dtype: torch.dtype | None) -> UMT5EncoderModel:
    try:
        model, info = UMT5EncoderModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype or "auto",
                                                       output_loading_info=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load a UMT5 encoder ({e})") from None
    except pickle.UnpicklingError as e:  # a pytorch_model.bin, which transformers reads weights-only
        raise CheckpointError(f"{folder}: its PyTorch weights file {why(e)}") from None
    report(f"{folder}: the checkpoint does not match the UMT5 encoder its config.json describes", {
        # from_pretrained would fill missing weights with random values: refuse instead
        "missing keys": sorted(info["missing_keys"]),
        "unexpected keys": sorted(k for k in info["unexpected_keys"] if not k.startswith(_IGNORED_HF_PREFIXES)),
        "shape mismatches": sorted(str(m) for m in info["mismatched_keys"]),
    })
    return model

