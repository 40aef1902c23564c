"""Tiny DiTs written in the quantized single-file formats users download, independently of wan_train's readers:
ComfyUI's fp8 "scaled" files (legacy marker and the per-layer ``comfy_quant`` form), plain float8 files (Ovi's), and
GGUF files as ComfyUI-GGUF's convert.py / llama-quantize / fix_5d_tensors.py leave them.

Facts (from ComfyUI's comfy/ops.py, comfy/utils.py convert_old_quants and a released wan2.2 fp8_scaled header): every
nn.Linear weight (blocks, text/time embeddings, time projection, head) in float8_e4m3fn with a 0-d float32
``scale_weight`` (W = scale_weight x Q) and a 0-d ``scale_input``; everything else float16; an empty float8 marker
``scaled_fp8``; per-layer form: ``<layer>.comfy_quant`` (uint8 UTF-8 JSON) and ``weight_scale`` / ``input_scale``.
GGUF (city96/ComfyUI-GGUF): architecture "wan", official names, dims reversed, 2-D block linears quantized, 1-D
tensors, modulation and the 5-D patch embedding in F32."""

import json

import numpy as np
import torch
from safetensors.torch import save_file

E4M3_MAX = 448.0
PREFIX = "model.diffusion_model."


def linear_weight_names(state: dict) -> list[str]:
    """The official names of every nn.Linear weight: 2-D ``.weight`` tensors (embeddings' rows are Linear too)."""
    return [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 2]


def fp8_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (w.float().abs().amax() / E4M3_MAX).clamp_min(1e-12)
    return (w.float() / scale).to(torch.float8_e4m3fn), scale.reshape(())


def write_comfy_fp8_scaled(state: dict, path, *, per_layer: bool = False, prefix: str = PREFIX) -> dict:
    """`state` (official names, float) as a ComfyUI fp8 scaled file; returns {weight name: (Q, scale)}."""
    out, stored = {}, {}
    for name, tensor in state.items():
        if name in linear_weight_names(state):
            q, scale = fp8_per_tensor(tensor)
            layer = name.removesuffix(".weight")
            out[prefix + name] = q
            stored[name] = (q, scale)
            if per_layer:
                conf = json.dumps({"format": "float8_e4m3fn"}).encode()
                out[prefix + layer + ".comfy_quant"] = torch.tensor(list(conf), dtype=torch.uint8)
                out[prefix + layer + ".weight_scale"] = scale
                out[prefix + layer + ".input_scale"] = torch.ones(())
            else:
                out[prefix + layer + ".scale_weight"] = scale
                out[prefix + layer + ".scale_input"] = torch.ones(())
        else:
            out[prefix + name] = tensor.to(torch.float16)
    if not per_layer:
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return stored


def write_plain_float8(state: dict, path, *, prefix: str = "") -> None:
    """Every floating tensor cast to float8_e4m3fn, no scales (Ovi's model_fp8_e4m3fn.safetensors)."""
    save_file({prefix + k: v.to(torch.float8_e4m3fn).contiguous() for k, v in state.items()}, str(path))


def q4_k_blocks(rows: int, cols: int, rng: np.random.Generator, *, qtype: str) -> np.ndarray:
    """Random valid Q4_K (144 B) or Q5_K (176 B) super-blocks of 256 weights as raw bytes [rows, cols / 256 * B]:
    fp16 d and dmin, 12 bytes of packed 6-bit scales and mins, (Q5_K: 32 bytes of high bits,) 128 bytes of nibbles."""
    size = {"Q4_K": 144, "Q5_K": 176}[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // 256, size), dtype=np.uint8)
    d = rng.uniform(0.5e-3, 2e-3, size=(rows, cols // 256, 2)).astype(np.float16)
    blocks[..., 0:4] = d.view(np.uint8).reshape(rows, cols // 256, 4)
    return blocks.reshape(rows, -1)


def write_gguf(state: dict, path, *, qtype: str = "Q8_0", prefix: str = "") -> None:
    """`state` (official names) as a Wan GGUF: 2-D block linears in `qtype` (Q8_0 quantized by the gguf package from
    the weights; Q4_K / Q5_K as random valid blocks, which the gguf package cannot quantize), the rest F32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    rng = np.random.default_rng(0)
    kind = gguf.GGMLQuantizationType[qtype]
    for name, tensor in state.items():
        array = tensor.detach().float().numpy()
        if name.startswith("blocks.") and array.ndim == 2 and not name.endswith(".modulation"):
            if qtype == "Q8_0":
                writer.add_tensor(prefix + name, gguf.quants.quantize(array, kind), raw_dtype=kind)
            else:
                writer.add_tensor(prefix + name, q4_k_blocks(*array.shape, rng, qtype=qtype), raw_dtype=kind)
        else:
            writer.add_tensor(prefix + name, array, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_SAFETENSORS_DTYPES = {torch.float8_e4m3fn: ("F8_E4M3", 1), torch.float16: ("F16", 2), torch.float32: ("F32", 4)}


def write_sparse_fp8_scaled(shapes: dict, path, *, prefix: str = PREFIX) -> None:
    """A ComfyUI fp8 scaled file of the given official names and shapes (a 14B layout, say) whose data section is a
    hole: a valid safetensors header, the file as long as the data, no disk blocks (every weight reads as 0)."""
    header, offset = {}, 0

    def add(name, dtype, shape):
        nonlocal offset
        code, size = _SAFETENSORS_DTYPES[dtype]
        nbytes = size * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes

    for name, shape in shapes.items():
        if name.endswith(".weight") and len(shape) == 2:
            add(prefix + name, torch.float8_e4m3fn, shape)
            add(prefix + name.removesuffix(".weight") + ".scale_weight", torch.float32, ())
            add(prefix + name.removesuffix(".weight") + ".scale_input", torch.float32, ())
        else:
            add(prefix + name, torch.float16, shape)
    add(prefix + "scaled_fp8", torch.float8_e4m3fn, (0,))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)
