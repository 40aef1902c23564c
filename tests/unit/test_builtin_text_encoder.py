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


def set_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far apart two token sets are as the DiT's cross-attention sees them (a set: its keys carry no position):
    the mean distance from each vector of `a` to the nearest of `b`, relative to their mean norm."""
    return float(torch.cdist(a, b).min(dim=1).values.mean() / a.norm(dim=-1).mean())


def test_word_order_reaches_the_token_set_as_far_as_a_word_does():
    """'from left to right' and 'from right to left' have the same words: only the encoder's mixing of each word
    with the one before it tells them apart. Their token sets must lie as far apart as two colours' (a random umT5
    layer alone left them 0.4% apart, against 25% for two colours)."""
    encoder = builtin_text_encoder(text_dim=4096, seed=0)
    captions = ["a large red circle moves from left to right on a black background",
                "a large red circle moves from right to left on a black background",
                "a large blue circle moves from left to right on a black background"]
    context, lengths = encoder.encode(captions)
    tokens = [context[i, :n] for i, n in enumerate(lengths.tolist())]
    order, colour = set_distance(tokens[0], tokens[1]), set_distance(tokens[0], tokens[2])
    assert order > 0.5 * colour > 0.05, (order, colour)
    # a word still leads its own token: "red" stays nearer to itself in another caption than to "blue"
    red, blue = tokens[0][2], tokens[2][2]
    assert torch.dist(red, tokens[1][2]) < torch.dist(red, blue)


def test_the_quickstart_pads_prompts_to_its_own_text_len_with_the_same_tokens():
    """The quickstart DiT reads 64 text positions, not Wan's 512 (sizes.py): its encoder pads to the same length,
    which changes no token of a prompt that fits (the padding is masked in the encoder) and cuts a longer one,
    keeping its EOS, as the real umT5 does at 512."""
    from wan_train.models import get_size

    text_len = get_size("quickstart").dit.text_len
    assert text_len == 64
    short, full = builtin_text_encoder(text_dim=64, text_len=text_len), builtin_text_encoder(text_dim=64)
    prompt = "wide — a small red square moves from bottom to top on a beige background"
    (a, n), (b, m) = short.encode([prompt]), full.encode([prompt])
    assert a.shape == (1, text_len, 64) and n.tolist() == m.tolist() == [16]
    torch.testing.assert_close(a[0, :16], b[0, :16], rtol=1e-5, atol=1e-6)
    _, lengths = short.encode([" ".join(["red"] * 100)])
    ids = short.tokenizer(" ".join(["red"] * 100), max_length=text_len, truncation=True)["input_ids"]
    assert lengths.tolist() == [text_len] and ids[-1] == short.tokenizer.eos_token_id
