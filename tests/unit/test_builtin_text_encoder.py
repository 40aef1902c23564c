"""The quickstart's zero-download text encoder: a word-piece tokenizer in front of a tiny random umT5."""

import torch

from wan_train.models import builtin_text_encoder
from wan_train.models.encoders.builtin import word_tokenizer


def test_known_words_are_one_token_and_other_words_are_spelled():
    tok = word_tokenizer()
    assert tok.tokenize("A large RED circle moves from left to right.") == [
        "a", "large", "red", "circle", "moves", "from", "left", "to", "right", "."]
    assert tok.tokenize("zxq") == ["z", "##x", "##q"]  # a trigger word keeps its spelling
    assert tok.tokenize("@Video1 meets @Video3") == ["@", "video1", "m", "##e", "##e", "##t", "##s", "@", "video3"]
    ids = tok("red ball")["input_ids"]
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0 and len(set(ids)) == 3


def test_prompts_encode_to_distinct_contexts_zero_past_their_end():
    encoder = builtin_text_encoder(text_dim=64, seed=0)
    context, lengths = encoder.encode(["a red circle on a black background", "a blue square on a beige background", ""])
    assert context.shape == (3, 512, 64) and lengths.tolist() == [8, 8, 1]
    assert not context[:, 8:].any() and not context[2, 1:].any()
    same = builtin_text_encoder(text_dim=64, seed=0).encode(["a red circle on a black background"])[0]
    assert torch.equal(same[0], context[0])  # deterministic from the seed
    assert not torch.allclose(context[0, :8], context[1, :8])
