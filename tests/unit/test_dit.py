"""Behaviour of the DiT that the checkpoints and the training code rely on."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import dit_inputs, randomize_, rel_err
from wan_train.models import WanDiT, get_size
from wan_train.models.dit.model import timestep_sinusoid
from wan_train.models.dit.rope import Rope3D, apply_rope


def model(name="tiny", **changes):
    return randomize_(WanDiT(get_size(name).dit.replace(**changes))).eval()


@pytest.mark.parametrize("name", ["tiny", "tiny-i2v", "tiny-ti2v"])
def test_output_is_a_velocity_for_the_latent(name):
    m = model(name)
    inputs = dit_inputs(m.config, frames=3, height=6, width=10, per_token_t=name == "tiny-ti2v")
    with torch.no_grad():
        out = m(**inputs)
    assert out.shape == inputs["x"].shape and out.dtype == torch.float32 and out.isfinite().all()


def test_zero_padding_of_the_prompt_does_not_change_the_output():
    m = model()
    inputs = dit_inputs(m.config, prompt_lens=(5, 3))
    padded = {**inputs, "context": F.pad(inputs["context"], (0, 0, 0, 40))}
    with torch.no_grad():
        assert torch.equal(m(**inputs), m(**padded))


def test_padded_text_tokens_are_attended():
    """The checkpoints were trained with the padding unmasked: the padded positions carry the text MLP of a zero
    vector, which the output depends on (a masked implementation would be indistinguishable from here on)."""
    m = model()
    inputs = dit_inputs(m.config)
    with torch.no_grad():
        ref = m(**inputs)
        m.text_embedding[2].bias.add_(0.5)  # moves the padded tokens and the real ones alike
        assert rel_err(m(**inputs), ref) > 1e-3


def test_per_token_timesteps_equal_to_t_match_the_scalar_timestep():
    m = model("tiny-ti2v")
    inputs = dit_inputs(m.config)
    tokens = 3 * 3 * 5
    per_token = {**inputs, "t": inputs["t"][:, None].expand(-1, tokens)}
    with torch.no_grad():  # equal up to float32 round-off of the differently shaped time-MLP matmuls
        assert rel_err(m(**per_token), m(**inputs)) < 1e-6


def test_samples_in_a_batch_are_independent():
    m = model("tiny-i2v")
    inputs = dit_inputs(m.config, batch=3, prompt_lens=(7, 4, 1))
    with torch.no_grad():
        batched = m(**inputs)
        single = m(**{k: None if v is None else v[1:2] for k, v in inputs.items()})
    torch.testing.assert_close(batched[1:2], single, rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    m = model().train()
    inputs = dit_inputs(m.config)
    grads = []
    for ckpt in (False, True):
        m.activation_checkpointing = ckpt
        m.zero_grad()
        m(**inputs).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=0, msg=n)


def official_rope_apply(x_BLNK, grid, split, theta=10000.0):
    """The official rope_apply, transcribed from wan_arch.md §1.5: complex multiply of adjacent channel pairs in
    float64 with per-axis tables indexed by the (f, h, w) position."""
    def params(dim):
        return torch.polar(torch.ones(1024, dim // 2, dtype=torch.float64),
                           torch.outer(torch.arange(1024, dtype=torch.float64),
                                       1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)))
    ft, fh, fw = (params(d) for d in split)
    f, h, w = grid
    freqs = torch.cat([ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1), fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
    x = torch.view_as_complex(x_BLNK.double().reshape(*x_BLNK.shape[:-1], -1, 2))
    return torch.view_as_real(x * freqs).flatten(-2).float()


@pytest.mark.parametrize("head_dim,grid", [(128, (3, 4, 5)), (32, (2, 7, 3))])
def test_rope_matches_the_official_complex_formulation(head_dim, grid):
    hw = 2 * (head_dim // 6)
    split = (head_dim - 2 * hw, hw, hw)
    assert split == ((44, 42, 42) if head_dim == 128 else split)
    rope = Rope3D(split=split, theta=10000.0, max_len=1024)
    x = torch.randn(2, grid[0] * grid[1] * grid[2], 3, head_dim)
    torch.testing.assert_close(apply_rope(x, *rope.for_grid(grid, x.device)), official_rope_apply(x, grid, split),
                               rtol=1e-6, atol=1e-6)


def test_timestep_sinusoid_is_cos_first_in_float64():
    t = torch.tensor([0.0, 1.0, 437.25, 999.0])
    emb = timestep_sinusoid(t, 256)
    assert emb.dtype == torch.float64 and emb.shape == (4, 256)
    k = torch.arange(128, dtype=torch.float64)
    angles = t.double()[:, None] * torch.pow(10000.0, -k / 128)
    torch.testing.assert_close(emb, torch.cat([angles.cos(), angles.sin()], dim=1), rtol=0, atol=0)
    assert torch.equal(emb[0, :128], torch.ones(128, dtype=torch.float64))


def test_bf16_weights_and_autocast_stay_close_to_float32():
    m = model("tiny-i2v")
    inputs = dit_inputs(m.config)
    with torch.no_grad():
        ref = m(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = m(**inputs)
            e, e0 = m.time_embeddings(inputs["t"])
        bf16 = m.to_dtype(torch.bfloat16)(**inputs)
    assert e.dtype == e0.dtype == torch.float32  # the time embedding ignores autocast, as the official model's
    assert rel_err(autocast, ref) < 3e-2 and rel_err(bf16, ref) < 3e-2


def test_bad_inputs_are_named():
    m = model("tiny-i2v")
    inputs = dit_inputs(m.config)
    cases = [
        ({"y": None}, r"x \(with y concatenated\) has shape \(2, 16, 3, 6, 10\); expected \[B, 36, F, H, W\]"),
        ({"clip_fea": None}, "has a CLIP image branch: pass clip_fea"),
        ({"context": torch.zeros(2, 513, 4096)}, r"context has shape \(2, 513, 4096\); expected \[B, S <= 512, 4096\]"),
        ({"t": torch.zeros(2, 7)}, r"t has shape \(2, 7\); expected \[2\] or \[2, 45\]"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            m(**{**inputs, **change})
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        m(**{**inputs, "x": inputs["x"][..., :5], "y": inputs["y"][..., :5]})
