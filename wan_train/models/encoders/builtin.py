"""The zero-download encoders of the quickstart: the pixel-space VAE stand-in and a tiny random umT5 with a
character-level tokenizer (same interfaces as the real ones, deterministic from a seed; nothing is fetched).
Character tokens keep the prompt's spelling in the context, so a tiny DiT can still learn from captions."""

import string

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from wan_train.models.encoders.t5 import WanTextEncoder
from wan_train.models.vae.pixel import PixelSpace

SPECIALS = ["<pad>", "</s>", "<unk>"]  # the T5 ids: pad 0, eos 1, unk 2


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + list(string.printable))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def builtin_text_encoder(*, text_dim: int, seed: int = 0) -> WanTextEncoder:
    tokenizer = char_tokenizer()
    config = UMT5Config(vocab_size=len(tokenizer), d_model=text_dim, num_heads=4, d_kv=16, d_ff=128, num_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config).eval().requires_grad_(False)
    return WanTextEncoder(model, tokenizer=tokenizer)


def builtin_vae() -> PixelSpace:
    return PixelSpace(detail=1)
