"""The umT5 text encoder: the official .pth and Hugging Face folders load into the transformers model bit-exactly,
the tokenizer pads with EOS, encode() has the official Wan semantics, prompts are cleaned, bad files fail clearly."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import UMT5Config, UMT5EncoderModel, UMT5ForConditionalGeneration

from tests.helpers import randomize_, rel_err, umt5_official_state, write_tiny_tokenizer
from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.encoders.t5 import (
    UMT5_XXL,
    WanTextEncoder,
    clean_prompt,
    load_text_encoder,
    load_umt5_encoder,
    load_umt5_tokenizer,
)

TINY = {"vocab_size": 300, "d_model": 32, "num_heads": 4, "d_kv": 8, "d_ff": 48, "num_layers": 2}
SENTENCES = ["A red fox jumps over the lazy dog.", "The cat sat on the mat, quietly!",
             "Waves crash on a rocky shore at sunset.", "A small robot walks through a neon city in the rain."]

@pytest.fixture(scope="module")
def hf_model():
    return randomize_(UMT5EncoderModel(UMT5Config(**TINY)), seed=1).eval()


@pytest.fixture
def official_pth(tmp_path, hf_model):
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(umt5_official_state(hf_model.state_dict()), path)
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), SENTENCES, vocab_size=120)


def ids_with_padding(lengths=(9, 5, 12), seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY["vocab_size"], (len(lengths), seq), generator=g)
    mask = (torch.arange(seq) < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


def hidden(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def assert_same_outputs(model, reference):
    ids, mask = ids_with_padding()
    assert torch.equal(hidden(model, ids, mask), hidden(reference, ids, mask))


# ------------------------------------------------------------------------------------------------ loading


def test_official_pth_loads_frozen_and_matches_transformers(official_pth, hf_model):
    model = load_umt5_encoder(official_pth)
    assert {k: getattr(model.config, k) for k in TINY} == TINY
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert_same_outputs(model, hf_model)


def test_umt5_xxl_constants_build_the_official_size():
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336  # official umT5-XXL encoder (5.68 B)
    assert model.config.dense_act_fn == "gelu_new" and model.config.is_gated_act  # gated GELU, tanh approximation


def test_hf_encoder_folder_and_full_umt5_folder_load(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "encoder")
    assert_same_outputs(load_umt5_encoder(tmp_path / "encoder"), hf_model)

    full = UMT5ForConditionalGeneration(UMT5Config(**TINY))  # google/umt5-xxl style: encoder + decoder + lm_head
    missing, _ = full.load_state_dict(hf_model.state_dict(), strict=False)
    assert all(k.startswith(("decoder.", "lm_head.")) for k in missing)
    full.save_pretrained(tmp_path / "full")
    assert_same_outputs(load_umt5_encoder(tmp_path / "full"), hf_model)


def test_dtype_casts_and_none_keeps_the_stored_dtype(tmp_path, official_pth, hf_model):
    assert {p.dtype for p in load_umt5_encoder(official_pth, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
    bf16_pth = tmp_path / "bf16.pth"
    torch.save({k: v.bfloat16() for k, v in torch.load(official_pth, weights_only=True).items()}, bf16_pth)
    assert {p.dtype for p in load_umt5_encoder(bf16_pth).parameters()} == {torch.bfloat16}
    hf_model.save_pretrained(tmp_path / "hf")
    assert {p.dtype for p in load_umt5_encoder(tmp_path / "hf", dtype=torch.bfloat16).parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("drop,add,expect", [
    ("blocks.1.ffn.fc2.weight", None, "missing keys (1): blocks.1.ffn.fc2.weight"),
    ("blocks.0.attn.q.weight", None, "no tensor 'blocks.0.attn.q.weight'"),
    (None, "blocks.0.attn.extra.weight", "unexpected keys (1): blocks.0.attn.extra.weight"),
])
def test_bad_official_file_names_the_file_and_key(official_pth, drop, add, expect):
    state = torch.load(official_pth, weights_only=True)
    state.pop(drop, None)
    if add:
        state[add] = torch.zeros(2)
    torch.save(state, official_pth)
    with pytest.raises(CheckpointError, match="models_t5_umt5-xxl-enc-bf16.pth") as e:
        load_umt5_encoder(official_pth)
    assert expect in str(e.value)


def test_wrong_shape_and_missing_hf_weights_are_refused(tmp_path, official_pth, hf_model):
    state = torch.load(official_pth, weights_only=True)
    state["blocks.1.attn.k.weight"] = state["blocks.1.attn.k.weight"][:-1]
    torch.save(state, official_pth)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.k\.weight: expected \[32, 32\], found \[31, 32\]"):
        load_umt5_encoder(official_pth)

    hf_model.save_pretrained(tmp_path / "hf")  # transformers would fill a missing weight randomly; we refuse
    weights = load_file(tmp_path / "hf/model.safetensors")
    del weights["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(weights, tmp_path / "hf/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): encoder\.block\.1\.layer\.1\.DenseReluDense\.wo"):
        load_umt5_encoder(tmp_path / "hf")


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.pth"):
        load_umt5_encoder(tmp_path / "nowhere.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: not a readable torch checkpoint"):
        load_umt5_encoder(tmp_path / "garbage.pth")
    with pytest.raises(CheckpointError, match="no_tokenizer.*tokenizer folder not found"):
        load_umt5_tokenizer(tmp_path / "no_tokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        load_umt5_tokenizer(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trips_appends_eos_and_pads(tokenizer_dir):
    tok = load_umt5_tokenizer(tokenizer_dir)
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    batch = tok(SENTENCES, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape == (len(SENTENCES), 64)
    for ids, mask, sentence in zip(batch["input_ids"], batch["attention_mask"], SENTENCES, strict=True):
        n = int(mask.sum())
        assert ids[n - 1] == 1 and (ids[n:] == 0).all() and (mask[n:] == 0).all()
        assert tok.decode(ids, skip_special_tokens=True) == sentence


# ------------------------------------------------------------------------------------------------ encode


@pytest.fixture
def encoder(official_pth, tokenizer_dir):
    return load_text_encoder(official_pth, tokenizer_dir, text_len=16)


def test_encode_matches_the_model_on_true_tokens_and_zeroes_the_rest(encoder, hf_model):
    prompts = ["A cat!", "A red fox."]  # 6 and 11 tokens with this tokenizer
    context, lengths = encoder.encode(prompts)
    assert context.shape == (2, 16, 32) and context.dtype == torch.float32 and lengths.dtype == torch.int64
    tokens = encoder.tokenizer(prompts)["input_ids"]  # unpadded, with EOS
    assert lengths.tolist() == [len(t) for t in tokens] and lengths[0] < lengths[1] < 16
    padded = encoder.tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    reference = hidden(hf_model, padded["input_ids"], padded["attention_mask"])
    for i, ids in enumerate(tokens):
        n = len(ids)
        assert torch.equal(context[i, :n], reference[i, :n]) and (context[i, n:] == 0).all()
        alone = hidden(hf_model, torch.tensor([ids]), torch.ones(1, n, dtype=torch.long))[0]
        assert rel_err(context[i, :n], alone) <= 1e-6  # padding changes nothing but float summation order


def test_batched_encode_equals_encoding_each_prompt_alone(encoder):
    prompts = ["The cat sat.", "A cat!", "A red fox."]
    context, lengths = encoder.encode(prompts)
    for i, prompt in enumerate(prompts):
        one, n = encoder.encode(prompt)
        assert n.tolist() == [lengths[i]] and (one[0, n:] == 0).all()
        assert rel_err(context[i], one[0]) <= 1e-6


def test_long_prompt_is_truncated_to_text_len_keeping_eos(encoder):
    context, lengths = encoder.encode(" ".join(SENTENCES * 5))
    assert context.shape == (1, 16, 32) and lengths.tolist() == [16]
    ids = encoder.tokenizer(" ".join(SENTENCES * 5), max_length=16, truncation=True)["input_ids"]
    assert ids[-1] == 1 and (context[0].abs().sum(-1) > 0).all()


def test_encode_cleans_prompts_and_follows_to(encoder):
    a, _ = encoder.encode("  A\n\n &amp;amp;   cat ")
    b, _ = encoder.encode("A & cat")
    assert torch.equal(a, b)
    encoder.to(torch.bfloat16)
    assert encoder.dtype == torch.bfloat16 and encoder.device == torch.device("cpu")
    assert encoder.encode(["A cat", "A red fox"])[0].dtype == torch.bfloat16


def test_tokenizer_bigger_than_the_vocabulary_is_refused(hf_model, tokenizer_dir):
    small = UMT5EncoderModel(UMT5Config(**{**TINY, "vocab_size": 10}))
    with pytest.raises(ValueError, match="more than the encoder's vocabulary of 10"):
        WanTextEncoder(small, tokenizer=load_umt5_tokenizer(tokenizer_dir))


# ------------------------------------------------------------------------------------------------ cleaning


@pytest.mark.parametrize("raw,clean", [
    ("Fish &amp;amp; chips &lt;3", "Fish & chips <3"),
    ("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "The Mona Lisa doesn't have eyebrows."),
    ("  a\tcat \n\n on  a mat \u3000 ", "a cat on a mat"),
])
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean
