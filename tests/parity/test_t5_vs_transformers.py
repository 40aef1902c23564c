"""Parity of the official Wan umT5 encoder math with transformers' UMT5EncoderModel as loaded by load_umt5_encoder:
a random file in the official key layout, run through a transcription of the official forward (W21:wan/modules/
t5.py, ``T5Encoder``) and through the loaded model. Pins the key table (a swapped gate/fc1 or q/k would show), the
relative position buckets (the sequence is longer than max_dist 128), the unscaled attention and the padding mask."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import rel_err
from wan_train.models.encoders.t5 import load_umt5_encoder

pytestmark = pytest.mark.parity

VOCAB, DIM, DIM_ATTN, DIM_FFN, HEADS, LAYERS, BUCKETS, MAX_DIST, EPS = 300, 32, 48, 40, 4, 2, 32, 128, 1e-6


def random_official_state(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def mat(out, inp):
        return torch.randn(out, inp, generator=g) / math.sqrt(inp)

    def norm():
        return 1 + 0.1 * torch.randn(DIM, generator=g)

    state = {"token_embedding.weight": torch.randn(VOCAB, DIM, generator=g), "norm.weight": norm()}
    for i in range(LAYERS):
        state |= {
            f"blocks.{i}.norm1.weight": norm(), f"blocks.{i}.norm2.weight": norm(),
            f"blocks.{i}.attn.q.weight": mat(DIM_ATTN, DIM), f"blocks.{i}.attn.k.weight": mat(DIM_ATTN, DIM),
            f"blocks.{i}.attn.v.weight": mat(DIM_ATTN, DIM), f"blocks.{i}.attn.o.weight": mat(DIM, DIM_ATTN),
            f"blocks.{i}.pos_embedding.embedding.weight": 0.5 * torch.randn(BUCKETS, HEADS, generator=g),
            f"blocks.{i}.ffn.gate.0.weight": mat(DIM_FFN, DIM), f"blocks.{i}.ffn.fc1.weight": mat(DIM_FFN, DIM),
            f"blocks.{i}.ffn.fc2.weight": mat(DIM, DIM_FFN),
        }
    return state


# ---- the official forward, transcribed (dropout is off at inference; fp16_clamp only acts in float16) ----


def official_bucket(rel_pos):
    num_buckets = BUCKETS // 2  # bidirectional
    rel_buckets = (rel_pos > 0).long() * num_buckets
    rel_pos = torch.abs(rel_pos)
    max_exact = num_buckets // 2
    rel_pos_large = max_exact + (torch.log(rel_pos.float() / max_exact) / math.log(MAX_DIST / max_exact)
                                 * (num_buckets - max_exact)).long()
    rel_pos_large = torch.min(rel_pos_large, torch.full_like(rel_pos_large, num_buckets - 1))
    return rel_buckets + torch.where(rel_pos < max_exact, rel_pos, rel_pos_large)


def official_norm(x, weight):
    x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + EPS)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.type_as(weight)
    return weight * x


def official_attention(x, mask, w, i):
    b, n, c = x.size(0), HEADS, DIM_ATTN // HEADS
    q, k, v = (F.linear(x, w[f"blocks.{i}.attn.{p}.weight"]).view(b, -1, n, c) for p in "qkv")
    seq = x.size(1)
    rel_pos = torch.arange(seq)[None] - torch.arange(seq)[:, None]
    bias = w[f"blocks.{i}.pos_embedding.embedding.weight"][official_bucket(rel_pos)].permute(2, 0, 1)[None]
    attn_bias = x.new_zeros(b, n, seq, seq) + bias
    attn_bias.masked_fill_(mask.view(b, 1, 1, -1) == 0, torch.finfo(x.dtype).min)
    attn = torch.einsum("binc,bjnc->bnij", q, k) + attn_bias  # T5 does not scale
    attn = F.softmax(attn.float(), dim=-1).type_as(attn)
    out = torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, -1, n * c)
    return F.linear(out, w[f"blocks.{i}.attn.o.weight"])


def official_ffn(x, w, i):
    gate = F.gelu(F.linear(x, w[f"blocks.{i}.ffn.gate.0.weight"]), approximate="tanh")
    return F.linear(F.linear(x, w[f"blocks.{i}.ffn.fc1.weight"]) * gate, w[f"blocks.{i}.ffn.fc2.weight"])


def official_encoder(ids, mask, w):
    x = w["token_embedding.weight"][ids]
    for i in range(LAYERS):
        x = x + official_attention(official_norm(x, w[f"blocks.{i}.norm1.weight"]), mask, w, i)
        x = x + official_ffn(official_norm(x, w[f"blocks.{i}.norm2.weight"]), w, i)
    return official_norm(x, w["norm.weight"])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 3e-2)])
def test_loaded_encoder_reproduces_the_official_forward(tmp_path, dtype, tol):
    state = random_official_state()
    torch.save(state, tmp_path / "umt5.pth")
    model = load_umt5_encoder(tmp_path / "umt5.pth", dtype=dtype)
    assert (model.config.d_kv, model.config.d_ff, model.config.num_layers) == (DIM_ATTN // HEADS, DIM_FFN, LAYERS)

    seq, lengths = 150, torch.tensor([150, 97, 5])  # past max_dist: the logarithmic buckets and their clamp
    ids = torch.randint(3, VOCAB, (len(lengths), seq), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(seq) < lengths[:, None]).long()
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
        reference = official_encoder(ids, mask, {k: v.to(dtype) for k, v in state.items()})
    assert ours.dtype == reference.dtype == dtype
    for i, n in enumerate(lengths.tolist()):  # positions past the length are discarded by Wan; compare the rest
        assert rel_err(ours[i, :n], reference[i, :n]) <= tol, (i, rel_err(ours[i, :n], reference[i, :n]))
