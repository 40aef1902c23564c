"""GPU behaviour (skipped without CUDA): bf16 paths and the flash-attention kernel."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests.helpers import dit_inputs, randomize_, rel_err
from wan_train.models import WanDiT, get_size, load_dit, save_dit

pytestmark = pytest.mark.gpu


def on(device, inputs):
    return {k: None if v is None else v.to(device) for k, v in inputs.items()}


@pytest.mark.parametrize("name", ["tiny", "tiny-i2v", "tiny-ti2v"])
def test_bf16_flash_attention_forward_backward_tracks_float32(name):
    model = randomize_(WanDiT(get_size(name).dit)).cuda()
    inputs = on("cuda", dit_inputs(model.config, per_token_t=name == "tiny-ti2v"))
    with torch.no_grad():
        ref = model(**inputs)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**inputs)
    assert rel_err(out.detach(), ref) < 3e-2
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_load_dit_to_cuda_in_bf16(tmp_path):
    model = randomize_(WanDiT(get_size("tiny").dit))
    save_dit(model, tmp_path / "m", max_shard_size="1MB")
    loaded = load_dit(tmp_path / "m", dtype=torch.bfloat16, device="cuda")
    keep = loaded.fp32_parameter_names()
    for name, p in loaded.named_parameters():
        assert p.device.type == "cuda" and p.dtype == (torch.float32 if name in keep else torch.bfloat16), name
    inputs = dit_inputs(model.config)
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = loaded(**on("cuda", inputs))
    with torch.no_grad():
        assert rel_err(out.cpu(), model(**inputs)) < 3e-2


@pytest.mark.parametrize("backend", ["flash", "cudnn", "flex"])
@pytest.mark.parametrize("compiled", [False, True])
def test_each_attention_backend_trains_like_sdpa(backend, compiled):
    """model.attention on CUDA: bf16 forward and backward through the pinned kernel (or FlexAttention), eager and
    with model.compile's blocks, against the default SDPA choice."""
    from wan_train.models.dit.compile import compile_blocks

    torch.manual_seed(0)
    model = randomize_(WanDiT(get_size("tiny").dit)).cuda()
    inputs = on("cuda", dit_inputs(model.config))
    grads = {}
    for name in ("sdpa", backend):
        model.set_attention(name).zero_grad(set_to_none=True)
        if compiled and name == backend:
            compile_blocks(model)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**inputs)
        out.float().square().mean().backward()
        grads[name] = (out.detach().float(), [p.grad.float().clone() for p in model.parameters()])
    (ref, ref_grads), (out, out_grads) = grads["sdpa"], grads[backend]
    assert rel_err(out, ref) < 2e-2
    assert all(rel_err(a, b) < 5e-2 for a, b in zip(out_grads, ref_grads, strict=True))
