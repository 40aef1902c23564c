"""OviDiT against Ovi's own FusionModel (ovi/modules/fusion.py), from a checkout of github.com/character-ai/Ovi
named by $OVI_SOURCE (skipped without it: Ovi is not a package on the registry). The same tiny random weights
go into both (ours saved in Ovi's key layout by the test's own key map); Ovi's flash_attention, which asserts
CUDA and flash-attn, is replaced by SDPA with the same key-length masking. Ovi casts to bfloat16 inside its
blocks (norms, RoPE, modulation) whatever the weights, so the two agree to bf16 rounding: about 1e-2 relative
after two blocks. Structural mistakes are far above that: a video cross-attention reading the audio after its
own cross-attention and FFN gives 0.75, an unscaled audio RoPE 0.1-0.15 (measured while writing this test)."""

import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import randomize_, rel_err
from tests.ovi_helpers import ovi_official_state
from wan_train.models import OviConfig, OviDiT, get_size

SOURCE = os.environ.get("OVI_SOURCE")
pytestmark = [pytest.mark.parity, pytest.mark.skipif(not SOURCE, reason="set OVI_SOURCE to a checkout of Ovi")]
TOLERANCE = 2e-2  # bf16 rounding inside Ovi's blocks (module docstring)


def sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                         causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16, version=None):
    """Ovi's flash_attention signature over SDPA: [B, L, N, K] in and out, keys past k_lens masked."""
    mask = None
    if k_lens is not None:
        mask = (torch.arange(k.shape[1])[None, :] < k_lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(*(x.transpose(1, 2).to(dtype) for x in (q, k, v)), attn_mask=mask)
    return out.transpose(1, 2).to(q.dtype)


@pytest.fixture(scope="module")
def fusion_module():
    modules = Path(SOURCE) / "ovi" / "modules"
    if not (modules / "fusion.py").is_file():
        pytest.fail(f"OVI_SOURCE={SOURCE}: no ovi/modules/fusion.py there")
    sys.path.insert(0, SOURCE)
    # ovi/modules/__init__.py imports its T5, which asks CUDA for a device at import: skip the package's __init__
    package = types.ModuleType("ovi.modules")
    package.__path__ = [str(modules)]
    sys.modules["ovi.modules"] = package
    from ovi.modules import attention, fusion, model

    for module in (attention, model, fusion):
        module.flash_attention = sdpa_flash_attention
    return fusion


@pytest.mark.parametrize("case", ["conditional", "negative_with_skipped_block", "first_frame_clean"])
def test_the_twin_tower_model_matches_ovis(fusion_module, case):
    size = get_size("tiny-ovi")
    ours = randomize_(OviDiT(OviConfig(video=size.dit, audio=size.audio)), seed=7).eval()
    widths = dict(dim=256, ffn_dim=512, freq_dim=256, num_heads=2, num_layers=2, text_len=512,
                  window_size=[-1, -1], qk_norm=True, cross_attn_norm=True, eps=1e-6)
    theirs = fusion_module.FusionModel(
        video_config=dict(patch_size=[1, 2, 2], model_type="ti2v", in_dim=48, out_dim=48, **widths),
        audio_config=dict(patch_size=[1], model_type="t2a", in_dim=20, out_dim=20,
                          temporal_rope_scaling_factor=0.19676, **widths))
    theirs.load_state_dict(ovi_official_state(ours), strict=True)
    theirs.eval().set_rope_params()

    g = torch.Generator().manual_seed(0)
    frames, height, width, audio_len = 4, 6, 8, 21
    video, audio = torch.randn(1, 48, frames, height, width, generator=g), torch.randn(1, 20, audio_len, generator=g)
    context, negative, audio_negative = (torch.randn(1, n, 4096, generator=g) for n in (9, 5, 7))
    t = torch.tensor([731.0])
    video_tokens, first_tokens = frames * height * width // 4, height * width // 4
    ctx_v, ctx_a, skip = (negative, audio_negative, 1) if case == "negative_with_skipped_block" else (context, context, 0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want_v, want_a = theirs(vid=[video[0]], audio=[audio[0].T], t=t, vid_context=[ctx_v[0]],
                                audio_context=[ctx_a[0]], vid_seq_len=video_tokens, audio_seq_len=audio_len,
                                first_frame_is_clean=case == "first_frame_clean", slg_layer=skip)
    t_video = t
    if case == "first_frame_clean":
        t_video = torch.full((1, video_tokens), 731.0)
        t_video[:, :first_tokens] = 0.0
    with torch.no_grad():
        got_v, got_a = ours(video, audio, t_video, t, ctx_v, audio_context=ctx_a, skip_blocks=(skip,) if skip else ())
    assert rel_err(got_v[0], want_v[0].float()) < TOLERANCE
    assert rel_err(got_a[0], want_a[0].float().T) < TOLERANCE
