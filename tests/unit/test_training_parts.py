"""The small training pieces: the LR schedule, trainable-parameter presets, EMA."""

import math

import pytest
import torch

from wan_train.models import WanDiT, get_size
from wan_train.training.ema import EMA
from wan_train.training.optim import lr_factor
from wan_train.training.trainable import apply_trainable


def test_warmup_then_constant_or_cosine():
    assert [lr_factor(s, warmup=4, total=10, schedule="constant", min_ratio=0) for s in range(4)] == [
        0.25, 0.5, 0.75, 1.0]
    assert lr_factor(9, warmup=4, total=10, schedule="constant", min_ratio=0) == 1.0
    assert lr_factor(4, warmup=4, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor(7, warmup=4, total=10, schedule="cosine", min_ratio=0.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(10, warmup=4, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("preset, trained, frozen", [
    ("all", ["patch_embedding.weight", "blocks.0.ffn.0.weight", "head.head.weight"], []),
    ("blocks", ["blocks.1.self_attn.q.weight"], ["patch_embedding.weight", "head.head.weight"]),
    ("attention", ["blocks.0.self_attn.q.weight", "blocks.1.cross_attn.k.weight"], ["blocks.0.ffn.0.weight"]),
    ("ffn", ["blocks.0.ffn.2.weight"], ["blocks.0.self_attn.q.weight", "text_embedding.0.weight"]),
])
def test_trainable_presets(preset, trained, frozen):
    dit = WanDiT(get_size("tiny").dit)
    count = apply_trainable(dit, preset)
    params = dict(dit.named_parameters())
    assert all(params[n].requires_grad for n in trained) and not any(params[n].requires_grad for n in frozen)
    assert count == sum(p.numel() for p in dit.parameters() if p.requires_grad) > 0
    with pytest.raises(ValueError, match="model.trainable='lm_head': expected one of"):
        apply_trainable(dit, "lm_head")


class _Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dit = torch.nn.Linear(2, 2)


def test_ema_tracks_the_weights_and_round_trips_through_its_state():
    module, ema = _Holder(), EMA(0.5)
    ema.on_train_start(None, module)
    start = module.dit.weight.detach().clone()
    with torch.no_grad():
        module.dit.weight.add_(2.0)
    ema.on_train_batch_end(None, module, None, None, 0)
    assert torch.allclose(ema.shadow["weight"], start + 1.0)  # halfway: 0.5 * old + 0.5 * new
    restored = EMA(0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.5 and torch.equal(restored.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(1.0)
