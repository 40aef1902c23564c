"""Memory features of a LoRA run (wan_train.memory): float8 storage of the frozen base, block offload and
activation offload. Offloading must not change a single gradient; float8 must stay inside its error bound."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import dit_inputs, randomize_, rel_err
from wan_train.lora import add_adapter
from wan_train.memory import (FP8, ActivationOffload, BlockOffload, Fp8Linear, Placement, dequantize, error_bound,
                              place_base, quantize)
from wan_train.models import WanDiT, get_size


def weights(seed=0, shape=(64, 96)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    w[3] *= 1e-4  # a row of tiny weights: per-tensor scales push it into e4m3's subnormal range
    w[5, 7] = 0.9  # an outlier that sets the per-tensor scale
    return w


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_fp8_round_trip_stays_inside_the_e4m3_error_bound(granularity):
    w = weights()
    q, scale = quantize(w, granularity=granularity)
    assert q.dtype == FP8 and scale.dtype == torch.float32
    assert scale.shape == (() if granularity == "tensor" else (w.shape[0], 1))
    error = (dequantize(q, scale) - w).abs()
    assert (error <= error_bound(w, scale)).all()
    assert dequantize(q, scale).abs().max() <= w.abs().max() * (1 + 2**-4)
    # e4m3 values are exact in bf16 (3 mantissa bits < 7), so the bf16 compute path adds no error of its own
    assert torch.equal(q.to(torch.bfloat16).float(), q.float())


def test_per_channel_scales_keep_small_rows_accurate():
    w = weights()
    per_tensor = (dequantize(*quantize(w, granularity="tensor")) - w)[3].abs().max() / w[3].abs().max()
    per_channel = (dequantize(*quantize(w, granularity="channel")) - w)[3].abs().max() / w[3].abs().max()
    assert per_channel <= 2**-4 < per_tensor


def test_fp8_quantize_keeps_zero_rows_and_refuses_unknown_granularity():
    w = weights()
    w[0] = 0
    q, scale = quantize(w)
    assert torch.equal(q[0].float(), torch.zeros(w.shape[1])) and scale[0] == 1
    with pytest.raises(ValueError, match="granularity"):
        quantize(w, granularity="block")


def test_fp8_linear_matches_the_dequantised_linear_and_saves_only_float8():
    linear = nn.Linear(96, 64)
    linear.weight.data = weights()
    layer = Fp8Linear.from_linear(linear, compute_dtype=torch.float32)
    x = torch.randn(2, 5, 96, requires_grad=True)
    reference_x = x.detach().clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    reference = F.linear(reference_x, layer.dequantized(), layer.bias)
    assert torch.equal(y, reference)
    y.square().sum().backward()
    reference.square().sum().backward()
    torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-6, atol=1e-7)
    assert not any(t.shape == (64, 96) and t.dtype != FP8 for t in saved)  # no dequantised copy kept for backward
    assert not layer.weight.requires_grad and layer.weight.dtype == FP8


def lora_dit(*, layers=4, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    dit = randomize_(WanDiT(get_size("tiny").dit.replace(num_layers=layers)))
    add_adapter(dit, target="attn_qkvo_ffn", rank=4, alpha=4.0, dropout=dropout)
    for name, p in dit.named_parameters():
        if "lora_B" in name:  # a trained adapter: B != 0, so the LoRA path carries gradient into the blocks
            nn.init.normal_(p, std=0.05)
    return dit.train()


def step(dit, *, checkpointing=False, seed=0):
    """Forward + backward of one loss; the output and every trained parameter's gradient."""
    dit.activation_checkpointing = checkpointing
    inputs = dit_inputs(dit.config, seed=seed)
    torch.manual_seed(123)  # LoRA dropout draws from the global generator
    out = dit(**inputs)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in dit.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("count", "prefetch", "checkpointing"), [(1, 1, False), (2, 1, True), (4, 2, False)])
def test_offloaded_blocks_give_exactly_the_gradients_of_the_plain_model(count, prefetch, checkpointing):
    dit = lora_dit(dropout=0.1)  # dropout: the recompute must draw the same masks
    offloaded = copy.deepcopy(dit)
    host_before = {n: p.detach().clone() for n, p in offloaded.named_parameters() if not p.requires_grad}
    offload = BlockOffload(offloaded, count=count, prefetch=prefetch)
    offloaded.block_offload = offload
    out, grads = step(dit, checkpointing=checkpointing)
    out_off, grads_off = step(offloaded, checkpointing=checkpointing)
    assert torch.equal(out, out_off)
    assert grads.keys() == grads_off.keys() and all(torch.equal(grads[n], grads_off[n]) for n in grads)
    assert offload.resident == set() and not offload.pending  # nothing left on the device after the step
    for index in range(4 - count, 4):  # the offloaded weights point at their unchanged host copies again
        for tensor, host in zip(offload.tensors[index], offload.host[index], strict=True):
            assert tensor.data_ptr() == host.data_ptr()
    assert all(torch.equal(p, host_before[n]) for n, p in offloaded.named_parameters() if not p.requires_grad)


def test_offloading_every_block_still_trains_block_zero():
    """Block 0's input does not require grad (the frozen patch embedding): its LoRA must get gradients anyway."""
    dit = lora_dit()
    offloaded = copy.deepcopy(dit)
    offloaded.block_offload = BlockOffload(offloaded, count=4)
    _, grads = step(dit)
    _, grads_off = step(offloaded)
    name = "blocks.0.self_attn.q.lora_A.default.weight"
    assert grads_off[name].abs().sum() > 0 and torch.equal(grads[name], grads_off[name])


def test_offloaded_inference_equals_the_plain_model_and_moves_with_the_model():
    dit = lora_dit().eval()
    offloaded = copy.deepcopy(dit)
    offload = BlockOffload(offloaded, count=2)
    offloaded.block_offload = offload
    inputs = dit_inputs(dit.config)
    with torch.no_grad():
        assert torch.equal(dit(**inputs), offloaded(**inputs))
    offloaded.to("cpu")  # a whole-model move: the offloaded tensors stay (pinned) host copies
    assert all(t.data_ptr() == h.data_ptr() for i in offload.tensors for t, h in zip(offload.tensors[i],
                                                                                      offload.host[i], strict=True))
    with torch.no_grad():
        assert torch.equal(dit(**inputs), offloaded(**inputs))
    offloaded.to(torch.bfloat16)  # a cast reaches the host copies too
    assert all(p.dtype == torch.bfloat16 for p in offloaded.parameters())
    assert all(h.dtype == torch.bfloat16 for hosts in offload.host.values() for h in hosts)


def test_block_offload_refuses_bad_counts():
    dit = lora_dit()
    for count in (0, 5):
        with pytest.raises(ValueError, match="offload_blocks"):
            BlockOffload(dit, count=count)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_offload_gives_the_same_gradients_and_copies_a_shared_tensor_once(checkpointing):
    dit = lora_dit()
    offloaded = copy.deepcopy(dit)
    packed = []

    class Counting(ActivationOffload):
        def pack(self, tensor):
            out = super().pack(tensor)
            if out is not tensor:
                packed.append(out[0])
            return out

    # on this CPU-only machine the "device" tensors are host tensors: offload them all the same
    offloaded.activation_offload = lambda: Counting(sources=("cpu",), min_bytes=0)
    out, grads = step(dit, checkpointing=checkpointing)
    out_off, grads_off = step(offloaded, checkpointing=checkpointing)
    assert torch.equal(out, out_off) and all(torch.equal(grads[n], grads_off[n]) for n in grads)
    assert packed, "nothing went through the activation offload"
    # the text context is saved by every block (its cross-attention k and v, or its checkpoint) but copied once
    copies = {}
    for host in packed:
        copies[host.data_ptr()] = copies.get(host.data_ptr(), 0) + 1
    assert max(copies.values()) >= (4 if checkpointing else 8)


def test_place_base_float8_keeps_lora_trainable_and_the_output_close():
    dit = lora_dit()
    fp8 = place_base(copy.deepcopy(dit), Placement(base_dtype="float8_e4m3fn"), compute_dtype=torch.float32)
    linears = [m for m in fp8.blocks.modules() if isinstance(m, Fp8Linear)]
    assert len(linears) == 4 * 10  # self q k v o, cross q k v o, ffn.0, ffn.2 per block
    assert all(p.dtype == torch.float32 for n, p in fp8.named_parameters() if p.requires_grad)
    assert {n for n, p in fp8.named_parameters() if p.requires_grad} == {
        n for n, p in dit.named_parameters() if p.requires_grad}
    inputs = dit_inputs(dit.config)
    with torch.no_grad():
        assert rel_err(fp8(**inputs), dit(**inputs)) < 0.05
    _, grads = step(fp8)
    assert all(g.isfinite().all() and g.abs().sum() > 0 for g in grads.values())


def test_place_base_bf16_keeps_the_fp32_parameters_fp32():
    dit = place_base(lora_dit(), Placement(base_dtype="bfloat16"))
    keep = dit.fp32_parameter_names()
    for name, p in dit.named_parameters():
        expected = torch.float32 if p.requires_grad or name in keep else torch.bfloat16
        assert p.dtype == expected, name
    with torch.no_grad():
        assert dit(**dit_inputs(dit.config)).isfinite().all()


def test_float8_base_with_offload_and_checkpointing_trains_like_float8_alone():
    dit = place_base(lora_dit(), Placement(base_dtype="float8_e4m3fn"), compute_dtype=torch.float32)
    offloaded = copy.deepcopy(dit)
    offloaded.block_offload = BlockOffload(offloaded, count=3)
    out, grads = step(dit, checkpointing=True)
    out_off, grads_off = step(offloaded, checkpointing=True)
    assert torch.equal(out, out_off) and all(torch.equal(grads[n], grads_off[n]) for n in grads)
