"""eval.caption_swap on real make_demo shards and the quickstart's architecture: each swap is measured on the clips
whose caption it changes, the loss is the training objective with the held-out noise, and a model that cannot see
its text (cross-attention output zeroed) reads no word."""

import doctest
from collections import Counter

import pytest
import torch

from data_tools.make_demo import make_demo
from data_tools.random_weights import randomize_
from eval import caption_swap
from eval.caption_swap import caption_losses, held_out_clips, parse_swap, swapped
from wan_train.flow.held_out import held_out_noise
from wan_train.inference.pipeline import WanModels
from wan_train.models import WanDiT, builtin_text_encoder, builtin_vae, get_size

SWAPS = [("red", "blue"), ("circle", "square"), ("zebra", "giraffe")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, num_clips=4, seed=0, width=96, height=64, frames=9, fps=16.0, shard_size=2)
    return [str(root)]


@pytest.fixture(scope="module")
def models():
    size = get_size("quickstart")
    return WanModels({None: randomize_(WanDiT(size.dit), seed=1).eval()}, builtin_vae(),
                     builtin_text_encoder(text_dim=size.dit.text_dim, seed=0, text_len=size.dit.text_len),
                     size="quickstart")


def clips(shards, frames=9):
    skipped = Counter()
    return list(held_out_clips(shards, frames=frames, fps=None, stride=16, skipped=skipped)), skipped


def test_swaps_are_whole_words_both_ways_at_once():
    assert doctest.testmod(caption_swap).failed == 0
    assert swapped("from left to right, then from right to left", "from left to right", "from right to left") == \
        "from right to left, then from left to right"
    assert swapped("a red circle", "zebra", "giraffe") == "a red circle"
    assert parse_swap(" red = blue ") == ("red", "blue")
    for bad in ("red", "red=", "=blue", "red=red"):
        with pytest.raises(ValueError, match="expected two different phrases"):
            parse_swap(bad)


def test_each_swap_counts_the_clips_it_changes_and_the_loss_is_the_training_objective(shards, models):
    found, skipped = clips(shards)
    assert len(found) == 4 and not skipped
    captions = [caption for _, caption, _ in found]
    result = caption_losses(models, iter(found), SWAPS, sigmas=(0.5, 1.0), seed=7)
    assert result["clips"] == 4
    for (a, b), entry in zip(SWAPS, result["swaps"], strict=True):
        assert entry["clips"] == sum(swapped(c, a, b) != c for c in captions)
    assert result["swaps"][2] == {"swap": "zebra=giraffe", "clips": 0, "own": [0.0, 0.0], "swapped": [0.0, 0.0],
                                  "cost": [0.0, 0.0]}
    assert result["swaps"][0]["clips"] > 0 and all(abs(c) > 1e-6 for c in result["swaps"][0]["cost"])
    # the first clip alone, by hand: x = (1 - s) x0 + s noise, target noise - x0, t = 1000 s
    key, caption, video = found[0]
    x0 = models.vae.encode(video[None])
    noise = held_out_noise(x0.shape, seed=7, index=0)
    context, _ = models.text_encoder.encode([caption])
    with torch.no_grad():
        pred = models.dits[None]((1 - 0.5) * x0 + 0.5 * noise, torch.tensor([500.0]), context)
    alone = caption_losses(models, iter(found[:1]), SWAPS, sigmas=(0.5,), seed=7)
    assert alone["own"][0] == pytest.approx((pred - (noise - x0)).pow(2).mean().item(), rel=1e-5)


def test_a_model_blind_to_its_text_reads_no_word(shards, models):
    blind = randomize_(WanDiT(get_size("quickstart").dit), seed=1).eval()
    for block in blind.blocks:
        torch.nn.init.zeros_(block.cross_attn.o.weight)
        torch.nn.init.zeros_(block.cross_attn.o.bias)
    found, _ = clips(shards)
    result = caption_losses(WanModels({None: blind}, models.vae, models.text_encoder), iter(found), SWAPS[:2],
                            sigmas=(0.5, 1.0))
    assert all(entry["clips"] > 0 and entry["cost"] == [0.0, 0.0] for entry in result["swaps"])


def test_clips_too_short_are_skipped_and_counted(shards, models):
    found, skipped = clips(shards, frames=13)  # 9-frame videos
    assert found == [] and skipped == Counter(too_short=4)
    with pytest.raises(ValueError, match="no held-out clips"):
        caption_losses(models, iter(found), SWAPS)
