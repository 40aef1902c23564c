"""load_dit / save_dit: every layout users have, bit-exact round trips, and clear errors for bad files."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import dit_inputs, randomize_
from wan_train.models import CheckpointError, DiTConfig, WanDiT, get_size, load_dit, save_dit


def tiny(name="tiny", seed=0, **changes):
    return randomize_(WanDiT(get_size(name).dit.replace(**changes)), seed=seed)


def tensors_of(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def rewrite_config(folder, *, drop=(), **changes):
    path = folder / "config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
    path.write_text(json.dumps({**config, **changes}))


def assert_same_weights(a: WanDiT, b: WanDiT):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name,changes", [("tiny", {}), ("tiny-i2v", {}), ("tiny-ti2v", {}),
                                          ("tiny-i2v", {"model_type": "flf2v", "image_pos_len": 514})])
def test_official_diffusers_official_round_trip_is_bit_exact(tmp_path, name, changes):
    model = tiny(name, **changes)
    save_dit(model, tmp_path / "a", layout="official", max_shard_size="2MB")
    save_dit(load_dit(tmp_path / "a"), tmp_path / "b", layout="diffusers", max_shard_size="3MB")
    save_dit(load_dit(tmp_path / "b"), tmp_path / "c", layout="official", max_shard_size="2MB")
    first, last = tensors_of(tmp_path / "a"), tensors_of(tmp_path / "c")
    assert first.keys() == last.keys() == model.state_dict().keys()
    for k in first:
        assert first[k].dtype == last[k].dtype and torch.equal(first[k], last[k]), k
    assert json.loads((tmp_path / "a/config.json").read_text()) == json.loads((tmp_path / "c/config.json").read_text())
    assert_same_weights(model, load_dit(tmp_path / "c"))
    assert load_dit(tmp_path / "b").config == model.config


def test_official_config_without_model_type_is_inferred_from_the_weights(tmp_path):
    model = tiny("tiny-i2v")
    save_dit(model, tmp_path / "m")
    rewrite_config(tmp_path / "m", drop=["model_type"], qk_norm=True, cross_attn_norm=True, window_size=[-1, -1],
                   patch_size=[1, 2, 2], text_dim=4096)
    assert load_dit(tmp_path / "m").config == model.config


def test_sharded_layout_matches_hugging_face_conventions(tmp_path):
    model = tiny()
    save_dit(model, tmp_path / "m", layout="diffusers", max_shard_size="1MB")
    shards = sorted(p.name for p in (tmp_path / "m").glob("*.safetensors"))
    n = len(shards)
    assert n > 1 and shards == [f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((tmp_path / "m/diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    config = json.loads((tmp_path / "m/config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel" and config["attention_head_dim"] == 128
    # one file, no index, when everything fits
    save_dit(model, tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((tmp_path / "one/config.json").read_text())["_class_name"] == "WanModel"


def test_loaded_model_computes_what_was_saved(tmp_path):
    model = tiny("tiny-i2v").eval()
    save_dit(model, tmp_path / "m", max_shard_size="2MB")
    loaded = load_dit(tmp_path / "m").eval()
    assert not any(p.is_meta for p in loaded.parameters())
    inputs = dit_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model(**inputs), loaded(**inputs))


# Linux: "5" in /proc/self/clear_refs resets the peak RSS (VmHWM) so the import's own peak does not hide the load's.
# Building a model on the meta device once first pays torch's one-off lazy imports (~70 MB), which do not scale
# with the checkpoint.
PEAK_RSS_OF_LOAD = """
import re, sys, torch
from wan_train.models import WanDiT, get_size, load_dit
with torch.device("meta"):
    WanDiT(get_size("tiny").dit)
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read())[1])
open("/proc/self/clear_refs", "w").write("5")
base = kib("VmRSS")
model = load_dit(sys.argv[1], dtype=None if sys.argv[2] == "none" else torch.bfloat16)
print((kib("VmHWM") - base) * 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.parametrize("dtype,bound", [("none", 0.5), ("bf16", 0.85)])
def test_sharded_load_never_holds_the_checkpoint_twice(tmp_path, dtype, bound):
    """Peak RSS growth of a fresh process loading a 186 MB sharded fp32 checkpoint. Reading every shard into a
    state dict and then into an initialised model costs 2x the checkpoint (1.5x when casting to bf16); load_dit
    builds on the meta device and assigns tensors as they are read: ~0.02x (safetensors maps the files
    copy-on-write and pages them in on use) and ~0.7x (the bf16 model plus one shard in flight)."""
    model = WanDiT(DiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=2))
    save_dit(model, tmp_path / "m", max_shard_size="20MB")
    checkpoint_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_OF_LOAD, str(tmp_path / "m"), dtype],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) < bound * checkpoint_bytes


def test_a14b_official_folder_needs_an_expert(tmp_path):
    high, low = tiny("tiny-moe", seed=1), tiny("tiny-moe", seed=2)
    save_dit(high, tmp_path / "a14b/high_noise_model")
    save_dit(low, tmp_path / "a14b/low_noise_model")
    assert_same_weights(load_dit(tmp_path / "a14b", expert="high_noise"), high)
    assert_same_weights(load_dit(tmp_path / "a14b", expert="low_noise"), low)
    with pytest.raises(ValueError, match="two experts.*high_noise"):
        load_dit(tmp_path / "a14b")
    with pytest.raises(ValueError, match="expert='medium'"):
        load_dit(tmp_path / "a14b", expert="medium")
    with pytest.raises(ValueError, match="single DiT"):
        load_dit(tmp_path / "a14b/high_noise_model", expert="low_noise")


def test_diffusers_pipeline_folder_transformer_is_high_noise(tmp_path):
    high, low = tiny("tiny-moe", seed=1), tiny("tiny-moe", seed=2)
    root = tmp_path / "Wan2.2-T2V-A14B-Diffusers"
    save_dit(high, root / "transformer", layout="diffusers", max_shard_size="2MB")
    save_dit(low, root / "transformer_2", layout="diffusers", max_shard_size="2MB")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "boundary_ratio": 0.875,
        "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": ["diffusers", "WanTransformer3DModel"],
    }))
    assert_same_weights(load_dit(root, expert="high_noise"), high)
    assert_same_weights(load_dit(root, expert="low_noise"), low)
    with pytest.raises(ValueError, match="two experts"):
        load_dit(root)
    # a Wan2.1 / TI2V pipeline: transformer_2 is null and there is one DiT
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": [None, None],
    }))
    assert_same_weights(load_dit(root), high)


@pytest.mark.parametrize("layout,prefix", [("official", "model.diffusion_model."), ("official", ""),
                                           ("diffusers", "")])
def test_single_file_infers_its_size(tmp_path, layout, prefix):
    model = tiny("tiny-i2v")
    save_dit(model, tmp_path / "m", layout=layout)
    state = load_file(tmp_path / "m/diffusion_pytorch_model.safetensors")
    save_file({prefix + k: v.to(torch.bfloat16) for k, v in state.items()}, tmp_path / "wan_comfy.safetensors")
    loaded = load_dit(tmp_path / "wan_comfy.safetensors")
    assert loaded.config == model.config
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_dtype_keeps_the_float32_parameters(tmp_path):
    save_dit(tiny(), tmp_path / "m")
    model = load_dit(tmp_path / "m", dtype=torch.bfloat16)
    fp32 = model.fp32_parameter_names()
    assert {"time_embedding.0.weight", "time_projection.1.weight", "head.modulation", "blocks.0.modulation",
            "blocks.0.norm3.weight", "blocks.1.self_attn.norm_q.weight"} <= fp32
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if name in fp32 else torch.bfloat16), name
    with torch.no_grad():
        assert model(**dit_inputs(model.config)).dtype == torch.float32


def test_save_replaces_atomically_and_a_failed_save_changes_nothing(tmp_path):
    first, second = tiny(seed=1), tiny(seed=2)
    save_dit(first, tmp_path / "m")
    save_dit(second, tmp_path / "m")
    assert_same_weights(load_dit(tmp_path / "m"), second)
    with pytest.raises(ValueError, match="max_shard_size"):
        save_dit(first, tmp_path / "m", max_shard_size="lots")
    assert_same_weights(load_dit(tmp_path / "m"), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or backup folders left behind


# ------------------------------------------------------------------------------------------------------ errors


def test_truncated_shard_names_the_file(tmp_path):
    save_dit(tiny(), tmp_path / "m", max_shard_size="1MB")
    shard = sorted((tmp_path / "m").glob("*-00002-of-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{shard.name}.*truncated"):
        load_dit(tmp_path / "m")
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=f"{shard.name}.*truncated"):
        load_dit(tmp_path / "m")


def test_mismatched_checkpoint_lists_keys_with_shapes(tmp_path):
    save_dit(tiny(), tmp_path / "m")
    rewrite_config(tmp_path / "m", num_layers=3, ffn_dim=640)
    with pytest.raises(CheckpointError) as e:
        load_dit(tmp_path / "m")
    msg = str(e.value)
    assert str(tmp_path / "m") in msg
    assert "missing keys" in msg and "blocks.2.self_attn.q.weight [256, 256]" in msg
    assert "blocks.0.ffn.0.weight in diffusion_pytorch_model.safetensors: expected [640, 256], found [512, 256]" in msg


def test_unexpected_key_and_missing_key_in_a_single_file(tmp_path):
    model = tiny()
    state = {f"model.diffusion_model.{k}": v for k, v in model.state_dict().items()}
    del state["model.diffusion_model.blocks.1.cross_attn.norm_k.weight"]
    state["model.diffusion_model.blocks.0.lora_A.weight"] = torch.zeros(4, 256)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_dit(tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "bad.safetensors" in msg
    assert "missing keys (1): blocks.1.cross_attn.norm_k.weight [256]" in msg
    assert "unexpected keys (1): model.diffusion_model.blocks.0.lora_A.weight [4, 256]" in msg


def test_missing_keys_are_named_in_the_files_layout(tmp_path):
    save_dit(tiny(), tmp_path / "m", layout="diffusers")
    path = tmp_path / "m/diffusion_pytorch_model.safetensors"
    state = load_file(path)
    del state["blocks.0.attn1.to_out.0.weight"]
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks\.0\.attn1\.to_out\.0\.weight \[256, 256\]"):
        load_dit(tmp_path / "m")


@pytest.mark.parametrize("layout,field", [("official", "dim_mult"), ("diffusers", "num_experts")])
def test_unknown_config_field_is_named(tmp_path, layout, field):
    save_dit(tiny(), tmp_path / "m", layout=layout)
    rewrite_config(tmp_path / "m", **{field: 2})
    with pytest.raises(CheckpointError, match=rf"config\.json: unknown config field\(s\) \['{field}'\]"):
        load_dit(tmp_path / "m")


def test_unsupported_and_unrecognised_folders(tmp_path):
    save_dit(tiny(), tmp_path / "m")
    rewrite_config(tmp_path / "m", model_type="vace", vace_layers=[0], vace_in_dim=96)
    with pytest.raises(CheckpointError, match="VACE checkpoints are not supported"):
        load_dit(tmp_path / "m")
    rewrite_config(tmp_path / "m", drop=["vace_layers", "vace_in_dim"], model_type="t2v", _class_name="AutoencoderKLWan")
    with pytest.raises(CheckpointError, match="_class_name='AutoencoderKLWan'"):
        load_dit(tmp_path / "m")
    (tmp_path / "m/config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_dit(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no such file"):
        load_dit(tmp_path / "nothing_here")


def test_early_diffusers_i2v_files_with_norm_added_q_load(tmp_path):
    model = tiny("tiny-i2v")
    save_dit(model, tmp_path / "m", layout="diffusers")
    path = tmp_path / "m/diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["blocks.0.attn2.norm_added_q.weight"] = torch.ones(256)
    save_file(state, path)
    assert_same_weights(load_dit(tmp_path / "m"), model)
