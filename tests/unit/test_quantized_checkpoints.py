"""load_dit on the quantized files users hold: ComfyUI fp8 scaled (legacy marker and per-layer comfy_quant, tensors
or header metadata), plain float8 (Ovi's), GGUF (Q8_0, Q4_K, Q5_K); float8 kept as stored for a frozen base; clear
errors for what is not read. The files are written by tests/quantized_files.py from the formats' own conventions."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import dit_inputs, randomize_, rel_err
from tests.quantized_files import PREFIX, write_comfy_fp8_scaled, write_gguf, write_plain_float8
from wan_train.memory import Fp8Linear
from wan_train.models import CheckpointError, WanDiT, get_size, load_dit

import gguf  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return randomize_(WanDiT(get_size("tiny").dit), seed=0).eval()


def dequantized_copy(model, stored):
    """The model with each stored weight replaced by s Q (float32) and the rest rounded through float16."""
    copy = WanDiT(model.config).eval()
    state = {k: (stored[k][0].float() * stored[k][1]) if k in stored else v.half().float()
             for k, v in model.state_dict().items()}
    copy.load_state_dict(state)
    return copy


@pytest.mark.parametrize("per_layer", [False, True], ids=["scaled_fp8", "comfy_quant"])
@pytest.mark.parametrize("prefix", [PREFIX, ""], ids=["prefixed", "bare"])
def test_comfy_fp8_scaled_file_loads_as_stored(tmp_path, model, per_layer, prefix):
    path = tmp_path / "wan_fp8_scaled.safetensors"
    stored = write_comfy_fp8_scaled(model.state_dict(), path, per_layer=per_layer, prefix=prefix)
    assert "blocks.0.ffn.0.weight" in stored and "text_embedding.0.weight" in stored and "head.head.weight" in stored
    loaded = load_dit(path, dtype=torch.float32).eval()
    expected = dequantized_copy(model, stored)
    for name, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.quantization.startswith("ComfyUI") and "float8_e4m3fn" in loaded.quantization
    assert f"{len(stored)} weights: {len(stored)} per tensor" in loaded.quantization
    inputs = dit_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), expected(**inputs))
        assert rel_err(loaded(**inputs), model(**inputs)) < 0.1  # float8 of random weights: a few percent


def test_without_a_dtype_float8_weights_are_exact_and_the_rest_as_stored(tmp_path, model):
    path = tmp_path / "m.safetensors"
    stored = write_comfy_fp8_scaled(model.state_dict(), path)
    loaded = load_dit(path)
    q, scale = stored["blocks.0.self_attn.q.weight"]
    assert torch.equal(loaded.blocks[0].self_attn.q.weight, q.float() * scale)  # s Q in float32: no rounding
    assert loaded.patch_embedding.weight.dtype == torch.float16  # ComfyUI's other tensors are float16


def test_keep_float8_leaves_the_files_block_weights_untouched(tmp_path, model):
    path = tmp_path / "m.safetensors"
    stored = write_comfy_fp8_scaled(model.state_dict(), path)
    loaded = load_dit(path, dtype=torch.float32, keep_float8=True).eval()
    q = loaded.blocks[1].cross_attn.v
    assert isinstance(q, Fp8Linear) and q.compute_dtype == torch.float32
    file_q, file_scale = stored["blocks.1.cross_attn.v.weight"]
    assert torch.equal(q.weight.view(torch.uint8), file_q.view(torch.uint8))  # no re-quantization
    assert torch.equal(q.weight_scale, file_scale)
    assert isinstance(loaded.text_embedding[0], torch.nn.Linear)  # outside the blocks: dequantized
    linears = [m for m in loaded.blocks.modules() if isinstance(m, (Fp8Linear, torch.nn.Linear))]
    assert all(isinstance(m, Fp8Linear) for m in linears)
    inputs = dit_inputs(model.config)
    with torch.no_grad():
        assert rel_err(loaded(**inputs), dequantized_copy(model, stored)(**inputs)) < 1e-6


def test_per_layer_json_in_the_header_metadata(tmp_path, model):
    path = tmp_path / "m.safetensors"
    write_comfy_fp8_scaled(model.state_dict(), path, per_layer=True)
    tensors = load_file(path)
    layers = {k.removeprefix(PREFIX).removesuffix(".comfy_quant"): json.loads(bytes(v.tolist()))
              for k, v in tensors.items() if k.endswith(".comfy_quant")}
    save_file({k: v for k, v in tensors.items() if not k.endswith(".comfy_quant")}, str(path), metadata={
        "_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})})
    loaded = load_dit(path, dtype=torch.float32)
    assert loaded.quantization.startswith("ComfyUI per-layer")
    q, s = tensors[PREFIX + "blocks.0.self_attn.o.weight"], tensors[PREFIX + "blocks.0.self_attn.o.weight_scale"]
    assert torch.equal(loaded.blocks[0].self_attn.o.weight, q.float() * s)


def test_plain_float8_file_loads_with_scale_one(tmp_path, model):
    path = tmp_path / "model_fp8_e4m3fn.safetensors"
    write_plain_float8(model.state_dict(), path)
    loaded = load_dit(path, dtype=torch.bfloat16)
    q = load_file(path)["blocks.0.ffn.2.weight"]
    assert torch.equal(loaded.blocks[0].ffn[2].weight, q.to(torch.bfloat16))
    assert loaded.quantization.startswith("float8 (float8_e4m3fn")


@pytest.mark.parametrize("change,message", [
    (lambda t: t.update({PREFIX + "blocks.0.self_attn.q.comfy_quant":
                         torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)}),
     r"layer blocks\.0\.self_attn\.q is quantized as 'nvfp4', which wan_train does not read"),
    (lambda t: [t.pop(PREFIX + "blocks.1.ffn.0." + k) for k in ("weight_scale", "input_scale", "comfy_quant")],
     r"float8 tensor model\.diffusion_model\.blocks\.1\.ffn\.0\.weight has no comfy_quant entry"),
    (lambda t: t.update({PREFIX + "blocks.0.self_attn.q.weight_scale": torch.ones(3)}),
     r"blocks\.0\.self_attn\.q\.weight_scale is torch\.float32 \[3\]; expected float32 of shape \[\]"),
    (lambda t: t.update({PREFIX + "blocks.9.self_attn.q.input_scale": torch.ones(())}),
     r"blocks\.9\.self_attn\.q\.input_scale belongs to no quantized layer"),
])
def test_what_is_not_read_is_named(tmp_path, model, change, message):
    path = tmp_path / "m.safetensors"
    write_comfy_fp8_scaled(model.state_dict(), path, per_layer=True)
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=message):
        load_dit(path)


def test_legacy_scale_without_its_weight_is_named(tmp_path, model):
    path = tmp_path / "m.safetensors"
    write_comfy_fp8_scaled(model.state_dict(), path)
    tensors = load_file(path)
    tensors[PREFIX + "blocks.7.ffn.0.scale_weight"] = torch.ones(())
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"blocks\.7\.ffn\.0\.scale_weight has no weight blocks\.7\.ffn\.0"):
        load_dit(path)


# ------------------------------------------------------------------------------------------------------- GGUF


def raw_dequantized(path) -> dict[str, torch.Tensor]:
    """Each tensor as the gguf package dequantizes it, in torch order (the GGUF dims reversed)."""
    reader = gguf.GGUFReader(str(path))
    return {t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
            .reshape([int(d) for d in t.shape[::-1]]) for t in reader.tensors}


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q5_K"])
def test_gguf_tensors_dequantize_as_the_gguf_package_does(tmp_path, model, qtype):
    path = tmp_path / f"wan-{qtype}.gguf"
    write_gguf(model.state_dict(), path, qtype=qtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blocks.0.self_attn.q.weight"] == qtype and types["patch_embedding.weight"] == "F32"
    loaded = load_dit(path, dtype=torch.float32).eval()
    expected = raw_dequantized(path)
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    assert loaded.quantization == f"GGUF (F32 {len(types) - 20}, {qtype} 20) in {path.name}"
    inputs = dit_inputs(model.config)
    with torch.no_grad():
        out = loaded(**inputs)
        assert torch.isfinite(out).all()
        if qtype == "Q8_0":  # quantized from the model's own weights: close to it
            assert rel_err(out, model(**inputs)) < 1e-2


def test_gguf_in_bfloat16_and_with_a_prefix(tmp_path, model):
    path = tmp_path / "wan.gguf"
    write_gguf(model.state_dict(), path, prefix=PREFIX)
    loaded = load_dit(path, dtype=torch.bfloat16)
    assert loaded.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert loaded.blocks[0].modulation.dtype == torch.float32  # kept float32 as from any file
    assert torch.equal(loaded.blocks[0].ffn[0].weight,
                       raw_dequantized(path)[PREFIX + "blocks.0.ffn.0.weight"].to(torch.bfloat16))


def test_gguf_errors_name_what_is_wrong(tmp_path, model):
    other = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    writer.add_tensor("x", np.zeros(4, np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(CheckpointError, match=r"general\.architecture is 'llama', not 'wan'"):
        load_dit(other)

    ternary = tmp_path / "tq.gguf"
    writer = gguf.GGUFWriter(str(ternary), "wan")
    kind = gguf.GGMLQuantizationType.TQ2_0
    for name, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if array.ndim == 2 and name.startswith("blocks."):
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(CheckpointError, match=r"quantized as TQ2_0 \(20 tensors\), which wan_train does not read"):
        load_dit(ternary)

    no_5d = tmp_path / "no5d.gguf"
    write_gguf({k: v for k, v in model.state_dict().items() if k != "patch_embedding.weight"}, no_5d)
    with pytest.raises(CheckpointError, match=r"no patch_embedding\.weight: ComfyUI-GGUF's convert\.py leaves"):
        load_dit(no_5d)

    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"junk\.gguf: not a readable GGUF file"):
        load_dit(tmp_path / "junk.gguf")


# ---------------------------------------------------------------------------------------------------- planner


def test_the_planner_counts_a_14b_fp8_scaled_file_as_its_load_holds_it(tmp_path):
    """A LoRA run on wan2.1_t2v_14B_fp8_scaled.safetensors keeps the file's float8 block weights with one scale each:
    the planner's weights term equals the bytes of the tensors a meta-device load, adapter and placement hold."""
    from omegaconf import OmegaConf

    from tests.quantized_files import write_sparse_fp8_scaled
    from wan_train.lora import add_adapter
    from wan_train.memory import Placement, float8_shells, place_base
    from wan_train.models.checkpoint.dit_io import float8_granularity
    from wan_train.plan.choose import fp8_granularity_of
    from wan_train.plan.estimate import Setting, Workload, estimate
    from wan_train.plan.gpus import GPUS

    size = get_size("wan2.1-t2v-14b")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(size.dit).state_dict().items()}
    path = tmp_path / "wan2.1_t2v_14B_fp8_scaled.safetensors"
    write_sparse_fp8_scaled(shapes, path)
    assert path.stat().st_size > 14e9  # the real file's size, held in no disk blocks
    assert float8_granularity(path) == "tensor"
    cfg = OmegaConf.create({"lora": {"enabled": True, "dora": False}, "model": {"checkpoint": str(path)},
                            "expert": {"name": None}, "memory": {"fp8_granularity": "channel"}})
    assert fp8_granularity_of(cfg) == "tensor"

    loaded = load_dit(path, dtype=torch.bfloat16, device="meta", keep_float8=True)
    assert loaded.config == size.dit and loaded.quantization.startswith("ComfyUI fp8 scaled")
    with float8_shells(loaded):
        add_adapter(loaded, target="attn_qkvo_ffn", rank=32, alpha=32.0)
    place_base(loaded, Placement(base_dtype="float8_e4m3fn"))
    assert isinstance(loaded.blocks[39].ffn[2].get_base_layer(), Fp8Linear)
    assert loaded.blocks[0].self_attn.q.get_base_layer().weight_scale.shape == ()
    held = sum(t.numel() * t.element_size() for t in [*loaded.parameters(), *loaded.buffers()] if not t.requires_grad)

    workload = Workload(size="wan2.1-t2v-14b", width=832, height=480, frames=81, lora_rank=32,
                        fp8_granularity=fp8_granularity_of(cfg))
    setting = Setting(base_dtype="float8_e4m3fn", activation_checkpointing=True, offload_activations=False,
                      offload_blocks=0)
    assert estimate(workload, setting, gpu=GPUS["h100"]).parts["weights"] == held
    per_row = estimate(Workload(size="wan2.1-t2v-14b", width=832, height=480, frames=81, lora_rank=32), setting,
                       gpu=GPUS["h100"]).parts["weights"]
    assert per_row > held  # wan_train's own quantization keeps a scale per output row
