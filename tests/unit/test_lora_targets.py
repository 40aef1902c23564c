"""LoRA target presets: each targets at least one module of the tiny models and only the intended ones, and the
peft config it builds wraps exactly those (with only adapter parameters left trainable by the caller)."""

import pytest
import torch
from peft import inject_adapter_in_model
from torch import nn

from tests.helpers import randomize_
from wan_train.lora.targets import TARGET_PRESETS, lora_config, targeted_modules
from wan_train.models import WanDiT, get_size

ATTN = {"q", "k", "v", "o"}
EXPECTED = {  # preset -> (attention part, projection) pairs it may take, per block
    "attn_qkvo": {("self_attn", p) for p in ATTN} | {("cross_attn", p) for p in ATTN | {"k_img", "v_img"}},
    "self_attn": {("self_attn", p) for p in ATTN},
    "cross_attn": {("cross_attn", p) for p in ATTN | {"k_img", "v_img"}},
}
EXPECTED["attn_qkvo_ffn"] = EXPECTED["attn_qkvo"] | {("ffn", "0"), ("ffn", "2")}
EXPECTED["all_linear"] = EXPECTED["attn_qkvo_ffn"]


@pytest.mark.parametrize("size", ["tiny", "tiny-i2v"])
@pytest.mark.parametrize("preset", sorted(TARGET_PRESETS))
def test_each_preset_targets_exactly_its_modules(preset, size):
    dit = WanDiT(get_size(size).dit)
    names = targeted_modules(dit, preset)
    assert names, f"{preset} targets nothing in {size}"
    linears = {n for n, m in dit.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")}
    expected = {n for n in linears if tuple(n.split(".")[2:4]) in EXPECTED[preset]}
    assert set(names) == expected
    assert all(n.startswith("blocks.") for n in names)  # never embeddings, time projection or head
    if size == "tiny-i2v" and preset in ("attn_qkvo", "cross_attn"):
        assert "blocks.0.cross_attn.k_img" in names


@pytest.mark.parametrize("preset", sorted(TARGET_PRESETS))
def test_peft_wraps_what_the_preset_names_and_starts_at_the_base_model(preset):
    dit = randomize_(WanDiT(get_size("tiny").dit)).eval()
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([500.0]), torch.randn(1, 6, 4096, generator=g)
    with torch.no_grad():
        before = dit(x, t, ctx)
    expected = targeted_modules(dit, preset)
    inject_adapter_in_model(lora_config(preset, rank=4, alpha=4.0), dit)
    wrapped = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in dit.named_parameters() if ".lora_A." in n})
    assert wrapped == sorted(expected)
    with torch.no_grad():
        assert torch.equal(dit(x, t, ctx), before)  # lora_B starts at zero


def test_config_options_and_errors():
    cfg = lora_config("attn_qkvo", rank=8, alpha=16.0, dropout=0.1, rslora=True, dora=True)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.use_rslora, cfg.use_dora) == (8, 16.0, 0.1, True, True)
    with pytest.raises(ValueError, match="known: attn_qkvo"):
        lora_config("everything", rank=4, alpha=4.0)
    with pytest.raises(ValueError, match="rank=0"):
        lora_config("attn_qkvo", rank=0, alpha=4.0)
