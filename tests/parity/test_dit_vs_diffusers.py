"""Parity with diffusers' WanTransformer3DModel: a random-weight diffusers model saved by diffusers itself, and
the same weights converted to the official layout, both load through load_dit and reproduce its forward."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tests.helpers import dit_inputs, randomize_, rel_err
from wan_train.models import load_dit

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

# Tiny configs of the three variants (head_dim 128 and text width 4096 as in the real models).
CASES = {
    "t2v": dict(in_channels=16, out_channels=16),
    "i2v": dict(in_channels=36, out_channels=16, image_dim=1280, added_kv_proj_dim=256),  # Wan2.1 CLIP branch
    "ti2v": dict(in_channels=48, out_channels=48),  # Wan2.2 VAE channels, per-token timesteps
}
COMMON = dict(num_attention_heads=2, attention_head_dim=128, text_dim=4096, ffn_dim=512, num_layers=2)

# diffusers -> official names, written independently of wan_train from diffusers' conversion script
# (scripts/convert_wan_to_diffusers.py, applied there as sequential str.replace in the other direction).
DIFFUSERS_TO_OFFICIAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    (".norm2.", ".norm3."),  # blocks only: the image embedder's norm2 was renamed above
    ("attn1.to_out.0", "self_attn.o"), ("attn1.to_q", "self_attn.q"), ("attn1.to_k", "self_attn.k"),
    ("attn1.to_v", "self_attn.v"), ("attn1.norm_", "self_attn.norm_"),
    ("attn2.to_out.0", "cross_attn.o"), ("attn2.to_q", "cross_attn.q"), ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"), ("attn2.add_k_proj", "cross_attn.k_img"), ("attn2.add_v_proj", "cross_attn.v_img"),
    ("attn2.norm_added_k", "cross_attn.norm_k_img"), ("attn2.norm_", "cross_attn.norm_"),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
]


def official_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    for a, b in DIFFUSERS_TO_OFFICIAL:
        key = key.replace(a, b)
    return key.replace("scale_shift_table", "modulation")


def write_official(diffusers_dir, out_dir, *, model_type, kw):
    """The official layout: renamed tensors and a WanModel config.json as the Wan-AI repos ship it."""
    state = load_file(diffusers_dir / "diffusion_pytorch_model.safetensors")
    out_dir.mkdir()
    save_file({official_key(k): v for k, v in state.items()}, out_dir / "diffusion_pytorch_model.safetensors")
    dim = kw["num_attention_heads"] * kw["attention_head_dim"]
    (out_dir / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": model_type, "text_len": 512,
        "in_dim": kw["in_channels"], "dim": dim, "ffn_dim": kw["ffn_dim"], "freq_dim": 256,
        "out_dim": kw["out_channels"], "num_heads": kw["num_attention_heads"], "num_layers": kw["num_layers"],
        "eps": 1e-6,
    }))


def reference_forward(ref, inputs):
    x = inputs["x"] if inputs["y"] is None else torch.cat([inputs["x"], inputs["y"]], dim=1)
    context = F.pad(inputs["context"], (0, 0, 0, 512 - inputs["context"].shape[1]))  # as WanPipeline pads
    with torch.no_grad():
        return ref(x, inputs["t"], context, encoder_hidden_states_image=inputs["clip_fea"], return_dict=False)[0]


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory):
    case = request.param
    kw = {**COMMON, **CASES[case]}
    ref = randomize_(diffusers.WanTransformer3DModel(**kw), seed=len(case)).eval()
    root = tmp_path_factory.mktemp(case)
    ref.save_pretrained(root / "diffusers", safe_serialization=True)
    write_official(root / "diffusers", root / "official", model_type=case, kw=kw)
    return case, ref, root


@pytest.mark.parametrize("layout", ["diffusers", "official"])
def test_forward_matches_diffusers(saved, layout):
    case, ref, root = saved
    ours = load_dit(root / layout).eval()
    assert ours.config.model_type == case
    for seed in range(2):
        inputs = dit_inputs(ours.config, seed=seed, per_token_t=case == "ti2v")
        with torch.no_grad():
            out = ours(**inputs)
        expected = reference_forward(ref, inputs)
        assert out.shape == expected.shape == inputs["x"].shape[:1] + (ours.config.out_dim,) + inputs["x"].shape[2:]
        # The official model computes the timestep sinusoid in float64, diffusers in float32 (see the next test).
        assert rel_err(out, expected) <= 1e-5


def test_only_the_sinusoid_precision_differs(saved, monkeypatch):
    """With diffusers' float32 sinusoid swapped in, everything else agrees to float32 round-off: the remaining
    1e-6-level difference above is the official float64 sinusoid, not the architecture."""
    from diffusers.models.embeddings import get_timestep_embedding

    import wan_train.models.dit.model as dit_model

    def float32_sinusoid(t, dim):
        flat = get_timestep_embedding(t.flatten().float(), dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return flat.reshape(*t.shape, dim)

    monkeypatch.setattr(dit_model, "timestep_sinusoid", float32_sinusoid)
    case, ref, root = saved
    ours = load_dit(root / "diffusers").eval()
    inputs = dit_inputs(ours.config, per_token_t=case == "ti2v")
    with torch.no_grad():
        out = ours(**inputs)
    assert rel_err(out, reference_forward(ref, inputs)) <= 1e-7
