"""Merging adapters into the weights equals applying them per token (<= 1e-5) and unmerging restores the base bit
for bit; blends are linear in their strengths; the training-time injection starts at the base model and trains
only the adapter; the base identity tells bases apart (and a bf16 copy from its fp32 original not)."""

import copy

import pytest
import torch

from tests.helpers import random_lora_modules, randomize_
from wan_train.lora import (
    BaseMismatchError, LoraWeights, adapter_modules, add_adapter, applied, base_identity, check_base,
    merge, merge_adapter, merged, targeted_modules,
)
from wan_train.models import WanDiT, get_size


def random_lora(model, *, seed, rank=4, alpha=8.0, preset="attn_qkvo_ffn") -> LoraWeights:
    return LoraWeights(source="random", modules=random_lora_modules(model, seed=seed, rank=rank, alpha=alpha,
                                                                     preset=preset))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def test_merged_forward_equals_the_adapter_forward_and_unmerge_restores_the_base_bit_for_bit(model, inputs):
    lora = random_lora(model, seed=1)
    before = state(model)
    base = model(**inputs)
    with applied(model, [(lora, 0.8)]):
        hooked = model(**inputs)
    handle = merge(model, [(lora, 0.8)])
    fused = model(**inputs)
    assert (hooked - base).abs().max() > 0.05  # the adapter changes the output: the comparison means something
    assert (fused - hooked).abs().max() <= 1e-5
    assert not torch.equal(model.blocks[0].self_attn.q.weight, before["blocks.0.self_attn.q.weight"])
    handle.unmerge()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(**inputs), base)
    with pytest.raises(RuntimeError, match="already unmerged"):
        handle.unmerge()


@torch.no_grad()
def test_merged_context_restores_even_after_an_exception(model, inputs):
    before = state(model)
    with pytest.raises(KeyError), merged(model, [(random_lora(model, seed=2), 1.0)]):
        raise KeyError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@torch.no_grad()
def test_blends_are_linear_in_their_strengths(model, inputs):
    """out(a*A + b*B) - base = a (out(A) - base) + b (out(B) - base) when merged (the deltas add in W; through
    the network the output is not linear, so compare the merged weights, and the per-Linear hook outputs)."""
    style, character = random_lora(model, seed=3), random_lora(model, seed=4, rank=2, alpha=1.5, preset="attn_qkvo")
    base = state(model)

    def delta(blend):
        with merged(model, blend):
            return {k: v - base[k] for k, v in model.state_dict().items()}

    a, b = 0.7, -0.4
    blend, one, two = delta([(style, a), (character, b)]), delta([(style, 1.0)]), delta([(character, 1.0)])
    for key in blend:
        torch.testing.assert_close(blend[key], a * one[key] + b * two[key], rtol=0, atol=1e-6)
    # per Linear, the hooks add exactly the same low-rank terms
    x = torch.randn(3, model.config.dim)
    q = model.blocks[0].self_attn.q
    with torch.no_grad():
        plain = q(x)
        with applied(model, [(style, a), (character, b)]):
            both = q(x)
        with applied(model, [(style, 1.0)]):
            only_style = q(x)
        with applied(model, [(character, 1.0)]):
            only_character = q(x)
    torch.testing.assert_close(both - plain, a * (only_style - plain) + b * (only_character - plain), rtol=0,
                               atol=1e-5)


def test_injected_adapter_starts_at_the_base_and_trains_only_itself(model, inputs):
    dit = copy.deepcopy(model)
    trainable = add_adapter(dit, target="attn_qkvo", rank=4, alpha=4.0)
    names = [n for n, p in dit.named_parameters() if p.requires_grad]
    assert names and all(".lora_A.default." in n or ".lora_B.default." in n for n in names)
    assert trainable == sum(p.numel() for p in dit.parameters() if p.requires_grad)
    assert len(names) == 2 * len(targeted_modules(model, "attn_qkvo"))
    with torch.no_grad():
        assert torch.equal(dit(**inputs), model(**inputs))  # B = 0
    loss = dit(**inputs).square().mean()
    loss.backward()
    assert all(p.grad is None for n, p in dit.named_parameters() if not p.requires_grad)
    # the adapter read out as LoraModules acts like peft's own forward, and peft's merge gives the same model
    with torch.no_grad():
        for n, p in dit.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.1)
        peft_out = dit(**inputs)
        modules = adapter_modules(dit)
        assert set(modules) == set(targeted_modules(model, "attn_qkvo"))
        with applied(model, [(LoraWeights(source="peft", modules=modules), 1.0)]):
            ours = model(**inputs)
        torch.testing.assert_close(ours, peft_out, rtol=0, atol=1e-5)
        merged_dit = merge_adapter(dit)
        assert set(merged_dit.state_dict()) == set(model.state_dict())  # plain names again
        torch.testing.assert_close(merged_dit(**inputs), peft_out, rtol=0, atol=1e-5)


def test_rslora_scale_is_alpha_over_sqrt_rank(model):
    dit = copy.deepcopy(model)
    add_adapter(dit, target="self_attn", rank=16, alpha=8.0, rslora=True)
    assert {m.scale for m in adapter_modules(dit).values()} == {8.0 / 4.0}


def test_identity_tells_bases_apart_but_not_a_bf16_copy(model):
    identity = base_identity(model)
    assert identity == base_identity(copy.deepcopy(model))
    assert identity == base_identity(copy.deepcopy(model).to(torch.bfloat16))  # the same weights, rounded
    injected = copy.deepcopy(model)
    add_adapter(injected, target="attn_qkvo_ffn", rank=2, alpha=2.0)
    assert base_identity(injected) == identity  # the adapter is not part of the base
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.blocks[1].ffn[0].weight.mul_(1.01)  # a fine-tune moves every sampled value
    assert base_identity(tuned) != identity
    other = randomize_(WanDiT(get_size("tiny").dit), seed=5)
    assert base_identity(other) != identity
    check_base(identity, model, what="acme/mascot/v0001")
    check_base(None, other, what="a file from another trainer")  # nothing recorded: nothing to check
    with pytest.raises(BaseMismatchError, match="acme/mascot/v0001 was trained on another base model.*"
                                                "allow_base_mismatch"):
        check_base(identity, other, what="acme/mascot/v0001")
    check_base(identity, other, what="acme/mascot/v0001", allow_mismatch=True)


def test_a_dora_run_folds_into_plain_weights_and_is_not_written_as_a_plain_lora(model, inputs):
    """DoRA (lora.dora=true) trains through peft; a run folder loads by peft's own merge; its magnitude vectors
    have no plain-LoRA form, so exporting it as one is refused rather than silently dropped."""
    dit = copy.deepcopy(model)
    add_adapter(dit, target="attn_qkvo", rank=4, alpha=4.0, dora=True)
    assert any("lora_magnitude_vector" in n for n, p in dit.named_parameters() if p.requires_grad)
    with torch.no_grad():
        for n, p in dit.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.1)
        adapted = dit(**inputs)
        assert (adapted - model(**inputs)).abs().max() > 1e-3
        with pytest.raises(ValueError, match="DoRA"):
            adapter_modules(dit)
        torch.testing.assert_close(merge_adapter(dit)(**inputs), adapted, rtol=0, atol=1e-5)
