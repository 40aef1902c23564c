import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers import dit_inputs
from wan_train.models import EXPERTS, SIZES, WanDiT, dit_flops, get_size

# wan_arch.md §1.11, in billions of parameters
PARAMETER_COUNTS = {
    "wan2.1-t2v-1.3b": 1.419, "wan2.1-t2v-14b": 14.288, "wan2.1-i2v-14b": 16.395, "wan2.1-flf2v-14b": 16.396,
    "wan2.2-ti2v-5b": 5.000, "wan2.2-t2v-a14b": 14.288, "wan2.2-i2v-a14b": 14.289,
}


@pytest.mark.parametrize("name,billions", PARAMETER_COUNTS.items())
def test_named_sizes_have_the_published_parameter_counts(name, billions):
    with torch.device("meta"):
        model = WanDiT(get_size(name).dit)
    assert round(model.num_parameters() / 1e9, 3) == billions


def test_moe_sizes_record_their_experts_and_boundary():
    assert get_size("wan2.2-t2v-a14b").experts == EXPERTS == ("high_noise", "low_noise")
    assert get_size("wan2.2-t2v-a14b").boundary == 0.875
    assert get_size("wan2.2-i2v-a14b").boundary == 0.9
    assert not get_size("wan2.2-i2v-a14b").dit.has_image_branch  # Wan2.2 dropped CLIP
    assert get_size("wan2.1-i2v-14b").dit.has_image_branch and get_size("wan2.1-i2v-14b").dit.in_dim == 36
    assert get_size("wan2.2-ti2v-5b").vae == "wan2.2" and get_size("wan2.2-ti2v-5b").dit.in_dim == 48
    assert all(not s.is_moe and s.boundary is None for n, s in SIZES.items() if "a14b" not in n and n != "tiny-moe")


def test_unknown_size_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model size 'wan3'.*wan2.1-t2v-1.3b"):
        get_size("wan3")


# wan_arch.md §7: forward TFLOP for one CFG branch, batch 1
@pytest.mark.parametrize("name,latent,tflop", [
    ("wan2.1-t2v-1.3b", (21, 60, 104), 283.0), ("wan2.1-t2v-14b", (21, 60, 104), 1678),
    ("wan2.1-t2v-14b", (21, 90, 160), 6523), ("wan2.1-i2v-14b", (21, 60, 104), 1686),
    ("wan2.2-ti2v-5b", (31, 44, 80), 517),
])
def test_flops_match_the_reference_table(name, latent, tflop):
    assert dit_flops(get_size(name).dit, latent).total / 1e12 == pytest.approx(tflop, rel=1e-3)


def test_flops_for_480p_1_3b_are_mostly_attention():
    flops = dit_flops(get_size("wan2.1-t2v-1.3b").dit, (21, 60, 104), batch=2)
    assert flops.attention_share == pytest.approx(0.70, abs=0.01)
    assert flops.train_step == pytest.approx(2 * 3 * 283.0e12, rel=1e-3)


@pytest.mark.parametrize("name", ["tiny", "tiny-i2v"])
def test_flops_agree_with_torch_flop_counter(name):
    """Independent count of the matmuls, convolutions and attention the forward actually runs."""
    cfg = get_size(name).dit
    model = WanDiT(cfg)
    inputs = dit_inputs(cfg, batch=2, frames=4, height=8, width=8)
    counter = FlopCounterMode(display=False)
    # SDPA's math backend runs attention as counted bmm's (the CPU flash kernel has no FLOP formula registered)
    with torch.no_grad(), counter, sdpa_kernel(SDPBackend.MATH):
        model(**inputs)
    # the formula leaves out the time-embedding MLP (per sample: 256 d + d^2 + 6 d^2 multiply-adds)
    time_mlp = 2 * 2 * (256 * cfg.dim + 7 * cfg.dim * cfg.dim)
    expected = dit_flops(cfg, (4, 8, 8), batch=2).total + time_mlp
    assert counter.get_total_flops() == expected


def test_every_size_but_the_test_sizes_has_an_official_sampling_preset():
    # without one, a size samples (validation videos, generate.py) at the generic 832 x 480 x 81
    from wan_train.inference.presets import OFFICIAL

    assert sorted(n for n in SIZES if not n.startswith("tiny")) == sorted(OFFICIAL)
