"""model.attention: the DiT's numerics are the same whichever kernel runs its attention, where the kernel exists on
the CPU (sdpa; flex forward only, torch has no FlexAttention backward on the CPU; flash and cuDNN are CUDA
kernels: tests/gpu/test_dit_gpu.py); a masked call (multi-shot cross-attention) takes SDPA whatever the backend;
an unknown backend is refused by name, and flex training on the CPU at config time."""

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from tests.helpers import dit_inputs, randomize_
from wan_train.models import ShotLayout, WanDiT, get_size
from wan_train.models.dit.layers import attention


def forward(dit: WanDiT, **extra) -> torch.Tensor:
    inputs = dit_inputs(dit.config, prompt_lens=(7, 9))
    with torch.no_grad():  # FlexAttention has no backward on the CPU (torch's): training there is refused
        return dit(inputs["x"], inputs["t"], inputs["context"], **extra)


@pytest.mark.parametrize("shots", [False, True])
def test_flex_attention_gives_sdpas_output(shots):
    torch.manual_seed(0)
    dit = randomize_(WanDiT(get_size("tiny").dit.replace(num_layers=2)))
    extra = {}
    if shots:  # the cross-attention mask: that call stays on SDPA, self-attention goes through flex
        dit.extend_shots(2)
        text = torch.tensor([[-1] * 3 + [0] * 3 + [1] * 5, [-1] * 4 + [0] * 2 + [1] * 5])
        extra["shots"] = ShotLayout(frame_shots=torch.tensor([[0, 0, 1], [0, 1, 1]]), text_shots=text)
    expected = forward(dit.set_attention("sdpa"), **extra)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = forward(dit.set_attention("flex"), **extra)
    assert {m.backend for m in dit.modules() if hasattr(m, "backend")} == {"flex"}
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_compiled_flex_is_the_fused_kernel_with_the_same_numbers():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 60, 2, 64, generator=g) for _ in range(3))  # [B, L, N, K] as the layers pass them
    expected = attention(q, k, v)
    compiled = torch.compile(lambda a, b, c: attention(a, b, c, backend="flex"))
    torch.testing.assert_close(compiled(q, k, v), expected, rtol=1e-5, atol=1e-5)
    reference = flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).flatten(2)
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-5)


def test_an_unknown_backend_and_flex_training_on_the_cpu_are_refused():
    with pytest.raises(ValueError, match=r"attention backend 'xformers': expected one of \['sdpa', 'flash', "
                                         r"'cudnn', 'flex'\]"):
        WanDiT(get_size("tiny").dit).set_attention("xformers")
    from wan_train.config import compose_config
    from wan_train.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match="model.attention='flex': torch's FlexAttention has no backward on the CPU"):
        validate(compose_config(["recipe=quickstart", "model.attention=flex", "trainer.accelerator=cpu"]))
