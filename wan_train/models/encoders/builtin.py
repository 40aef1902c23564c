"""The zero-download encoders of the quickstart: the pixel-space VAE stand-in and a tiny random umT5 with a
small word-piece tokenizer (same interfaces as the real ones, deterministic from a seed; nothing is fetched).

The tokenizer knows WORDS whole (the words of the demo captions, common English and film words) and spells any
other word in characters, so every prompt keeps its content. Whole words matter: with one token per character
a tiny DiT learns to ignore the prompt (its cross-attention rests on the padding; prompts and shuffled prompts
gave the same prediction after 1000 steps), while one token per word lets it read the caption within a few
hundred steps (README, quickstart).

Word order: the DiT's cross-attention sees the context as a set (its keys carry no position), so order reaches it only
through the encoder mixing each word with its neighbours, as a trained umT5 does. A random one-layer umT5 barely
mixes (its relative-position bias is near zero, so each token attends evenly): "from left to right" and "from right
to left" gave token vectors 0.4% apart, against 25% for "red" and "blue". The stand-in's bias therefore puts most of
each token's attention on the token before it (PREVIOUS_TOKEN_BIAS), so a word carries the word before it: the two
directions' token sets lie as far apart as two colours'."""

import string

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from wan_train.models.encoders.t5 import WanTextEncoder
from wan_train.models.vae.pixel import PixelSpace

PREVIOUS_TOKEN_BIAS = 4.0  # attention logit of the token just before each token (all others 0): about 0.8 of its
# attention in a demo caption
SPECIALS = ["<pad>", "</s>", "<unk>"]  # the T5 ids: pad 0, eos 1, unk 2
WORDS = """
a an the and or but with without of in on at to from into onto over under above below behind before after near
by for as is are was be it its this that these those he she they his her their we you i one two three
then next later meanwhile afterwards finally cut shot shots scene camera close up wide medium establishing
extreme reaction view pan zoom tracking static slow fast quickly slowly back forth around across through along
left right top bottom middle centre center down toward towards away moves move moving runs walks flies
rolls slides bounces turns spins waves stands sits looks jumps dances
large small big tiny tall short round bright dark light pale deep
red orange yellow green blue purple pink white black grey gray brown beige gold silver
circle square triangle ball box cube star shape shapes
background sky sea beach city street room forest field water sun night day morning evening dawn dusk
man woman person people boy girl child dog cat bird car robot knight castle horse mascot character
video1 video2 video3
""".split()
# the audio-video demo's words (make_av_demo's captions, Ovi's <AUDCAP> tags), added after every other token so
# the ids, and the random embeddings, of the words above stay what they were
AV_WORDS = """
flash flashes flashing once twice times time each beep beeps low high sound sounds loud quiet screen audcap
endaudcap
""".split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased words and punctuation marks; a word in WORDS is one token, any other is spelled in
    characters (word pieces "x", "##y", "##z"); characters outside string.printable are <unk>."""
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {token: i for i, token in enumerate(SPECIALS + list(dict.fromkeys(WORDS + chars))
                                                + ["##" + c for c in chars] + AV_WORDS)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def builtin_text_encoder(*, text_dim: int, seed: int = 0, text_len: int = 512) -> WanTextEncoder:
    """The tiny random umT5 of width `text_dim`, from `seed`; prompts are cut at `text_len` tokens (the DiT's)."""
    tokenizer = word_tokenizer()
    base = len(tokenizer) - len(AV_WORDS)
    config = UMT5Config(vocab_size=base, d_model=text_dim, num_heads=4, d_kv=16, d_ff=128, num_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config).eval().requires_grad_(False)
    attention = model.encoder.block[0].layer[0].SelfAttention
    previous = int(attention._relative_position_bucket(torch.tensor(-1)))  # key position - query position = -1
    bias = torch.zeros_like(attention.relative_attention_bias.weight)
    bias[previous] = PREVIOUS_TOKEN_BIAS
    attention.relative_attention_bias.weight.data.copy_(bias)
    # the AV_WORDS rows, drawn after (and apart from) the model, as T5 initialises its embedding (N(0, factor))
    extra = torch.randn(len(AV_WORDS), text_dim, generator=torch.Generator().manual_seed(seed + 1))
    table = torch.cat([model.get_input_embeddings().weight, extra * config.initializer_factor])
    model.set_input_embeddings(torch.nn.Embedding.from_pretrained(table, freeze=True))
    model.config.vocab_size = len(tokenizer)
    return WanTextEncoder(model, tokenizer=tokenizer, text_len=text_len)


def builtin_vae() -> PixelSpace:
    return PixelSpace(detail=1)
