"""wan_train.flow: the rectified-flow path, the shift, the sigma samplers (incl. truncation to an MoE expert's
range), the expert split, the loss and the held-out loss inputs (wan_arch.md §4)."""

import math

import pytest
import torch

from wan_train.flow import (
    NUM_TRAIN_TIMESTEPS, SAMPLER_KINDS, WEIGHTINGS, ExpertRange, SigmaSampler, conditioning_frame_mask,
    expert_for_sigma, expert_range, flow_loss, held_out_noise, held_out_sigmas, interpolate, loss_weight,
    per_sample_loss, shift_sigma, to_timestep, unshift_sigma, velocity_target,
)
from wan_train.flow.experts import EXPERT_NAMES

SHIFTS = (0.5, 1.0, 3.0, 5.0, 12.0, 16.0)
GRID = torch.linspace(0, 1, 1001, dtype=torch.float64)


# --- path and target ---------------------------------------------------------------------------------------------

def test_interpolation_ends_at_data_and_noise():
    x0, noise = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    assert torch.equal(interpolate(x0, noise, 0.0), x0)
    assert torch.equal(interpolate(x0, noise, 1.0), noise)
    per_sample = interpolate(x0, noise, torch.tensor([0.0, 1.0]))  # sigma [B] broadcasts over C, F, H, W
    assert torch.equal(per_sample[0], x0[0]) and torch.equal(per_sample[1], noise[1])
    mid = interpolate(x0, noise, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(mid[1], 0.25 * x0[1] + 0.75 * noise[1])


def test_target_is_the_sigma_derivative_of_the_path():
    x0, noise = torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.randn(3, 2, 2, 3, 3, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 0.93], dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda s: interpolate(x0, noise, s), sigma)  # [B, ..., B]
    dx_dsigma = torch.stack([jacobian[b, ..., b] for b in range(3)])
    torch.testing.assert_close(dx_dsigma, velocity_target(x0, noise))
    off_diagonal = jacobian[0, ..., 1:]  # sample 0 does not depend on the other samples' sigma
    assert torch.count_nonzero(off_diagonal) == 0
    h = 1e-6  # and by central differences, as a check independent of autograd
    fd = (interpolate(x0, noise, sigma + h) - interpolate(x0, noise, sigma - h)) / (2 * h)
    torch.testing.assert_close(fd, noise - x0)


def test_path_and_target_are_float32_for_bf16_latents():
    x0, noise = torch.randn(1, 2, 1, 2, 2).bfloat16(), torch.randn(1, 2, 1, 2, 2)
    assert interpolate(x0, noise, 0.3).dtype == torch.float32
    assert velocity_target(x0, noise).dtype == torch.float32


def test_interpolate_rejects_a_sigma_per_sample_of_the_wrong_length():
    with pytest.raises(ValueError, match="sigma"):
        interpolate(torch.zeros(2, 1, 1, 1, 1), torch.zeros(2, 1, 1, 1, 1), torch.tensor([0.1, 0.2, 0.3]))


# --- shift and timesteps -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", SHIFTS)
def test_shift_is_a_monotone_map_of_the_unit_interval_and_unshift_inverts_it(shift):
    shifted = shift_sigma(GRID, shift)
    assert shifted[0] == 0.0 and shifted[-1] == 1.0
    assert torch.all(shifted.diff() > 0)
    torch.testing.assert_close(unshift_sigma(shifted, shift), GRID, rtol=0, atol=1e-12)
    torch.testing.assert_close(shift_sigma(unshift_sigma(GRID, shift), shift), GRID, rtol=0, atol=1e-12)


def test_shift_one_is_the_identity_and_larger_shifts_push_sigma_towards_noise():
    assert torch.equal(shift_sigma(GRID, 1.0), GRID)
    inner = GRID[1:-1]
    for smaller, larger in zip(SHIFTS[:-1], SHIFTS[1:], strict=True):
        assert torch.all(shift_sigma(inner, larger) > shift_sigma(inner, smaller))
    assert shift_sigma(0.5, 5.0) == pytest.approx(5 / 6)  # s*sigma / (1 + (s - 1)*sigma)
    assert isinstance(shift_sigma(0.5, 5.0), float)


def test_timestep_is_a_thousand_times_sigma_and_stays_fractional():
    assert NUM_TRAIN_TIMESTEPS == 1000
    assert to_timestep(0.8748) == pytest.approx(874.8)
    t = to_timestep(torch.tensor([0.0, 0.0005, 1.0]))
    assert t.dtype == torch.float32 and torch.allclose(t, torch.tensor([0.0, 0.5, 1000.0]))


def test_bad_shift_raises():
    with pytest.raises(ValueError, match="shift"):
        shift_sigma(0.5, 0.0)


# --- samplers ----------------------------------------------------------------------------------------------------

def truncated_cdf(sampler, x, low, high):
    a, b = sampler.cdf(torch.tensor([low, high], dtype=torch.float64))
    return (sampler.cdf(x.double()) - a) / (b - a)


def ks_distance(samples, cdf_values_at_sorted):
    """sup |F_empirical - F| for samples sorted ascending and F evaluated at them."""
    n = samples.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - cdf_values_at_sorted).max().item(), (cdf_values_at_sorted - (i - 1) / n).max().item())


def two_sample_ks(a, b):
    grid = torch.cat([a, b]).double().sort().values
    fa = torch.searchsorted(a.double().sort().values, grid, right=True) / a.numel()
    fb = torch.searchsorted(b.double().sort().values, grid, right=True) / b.numel()
    return (fa - fb).abs().max().item()


# (sampler, expert, boundary): the Wan2.2 A14B boundaries with the shifts their users train with
CASES = [
    (SigmaSampler("logit_normal", shift=5.0), "high_noise", 0.9),
    (SigmaSampler("logit_normal", shift=12.0), "low_noise", 0.875),
    (SigmaSampler("logit_normal", shift=12.0), "high_noise", 0.875),
    (SigmaSampler("uniform", shift=5.0), "high_noise", 0.875),
    (SigmaSampler("uniform", shift=5.0), "low_noise", 0.9),
    (SigmaSampler("logit_normal", mean=-0.5, std=1.5, shift=3.0), None, None),
]
CASE_IDS = [f"{s.kind}-shift{s.shift:g}-{e}-{b}" for s, e, b in CASES]


@pytest.mark.parametrize("sampler,expert,boundary", CASES, ids=CASE_IDS)
def test_truncated_samples_stay_in_the_expert_range(sampler, expert, boundary):
    rng = expert_range(expert, boundary)
    sigma = sampler.sample(20_000, generator=torch.Generator().manual_seed(1), low=rng.low, high=rng.high)
    assert sigma.dtype == torch.float32 and sigma.shape == (20_000,)
    assert rng.contains(sigma).all()  # compared in float32 ...
    assert rng.contains(sigma.double()).all()  # ... and in float64: never on the other side of the boundary
    if boundary is not None:
        assert all(expert_for_sigma(s, boundary) == expert for s in sigma[:200].tolist())


def test_the_top_of_a_truncated_range_is_excluded_unless_it_is_pure_noise():
    sampler = SigmaSampler("uniform")  # icdf(1) is exactly the upper end: the worst case for rounding
    top = sampler.quantile(torch.tensor([1.0], dtype=torch.float64), low=0.0, high=0.9)
    assert top.item() < 0.9 and bool(top < 0.9) and expert_for_sigma(top, 0.9) == "low_noise"
    assert sampler.quantile(torch.tensor([1.0]), low=0.9, high=1.0).item() == 1.0


@pytest.mark.parametrize("sampler,expert,boundary", CASES, ids=CASE_IDS)
def test_truncation_keeps_the_shape_of_the_distribution(sampler, expert, boundary):
    rng = expert_range(expert, boundary)
    sigma = sampler.sample(20_000, generator=torch.Generator().manual_seed(2), low=rng.low, high=rng.high)
    sigma = sigma.double().sort().values
    assert ks_distance(sigma, truncated_cdf(sampler, sigma, rng.low, rng.high)) < 0.02
    # the same as rejection sampling from the untruncated sampler (musubi's --preserve_distribution_shape)
    full = sampler.sample(200_000, generator=torch.Generator().manual_seed(3))
    accepted = full[rng.contains(full)]
    assert accepted.numel() > 10_000
    assert two_sample_ks(sigma, accepted) < 0.025


def test_the_shape_test_detects_rescaling_instead_of_truncation():
    sampler, rng = SigmaSampler("logit_normal", shift=12.0), expert_range("low_noise", 0.875)
    full = sampler.sample(20_000, generator=torch.Generator().manual_seed(4))
    rescaled = (rng.low + (rng.high - rng.low) * full.double()).sort().values
    assert ks_distance(rescaled, truncated_cdf(sampler, rescaled, rng.low, rng.high)) > 0.05


@pytest.mark.parametrize("sampler", [s for s, _, _ in CASES[:4]] + [SigmaSampler("uniform")], ids=str)
def test_cdf_and_icdf_are_inverse(sampler):
    u = torch.linspace(0, 1, 513, dtype=torch.float64)
    torch.testing.assert_close(sampler.cdf(sampler.icdf(u)), u, rtol=0, atol=1e-9)
    sigma = torch.linspace(0.001, 0.999, 513, dtype=torch.float64)
    torch.testing.assert_close(sampler.icdf(sampler.cdf(sigma)), sigma, rtol=0, atol=1e-9)
    assert sampler.cdf(0.0).item() == 0.0 and sampler.cdf(1.0).item() == 1.0
    if sampler.kind == "logit_normal":  # accurate far into the lower tail, where small sigmas live at shift 12
        z = (math.log(1e-6) - sampler.mean) / sampler.std  # logit of an unshifted sigma of ~1e-6
        expected = 0.5 * math.erfc(-z / math.sqrt(2))
        assert sampler.cdf(shift_sigma(1e-6 / (1 + 1e-6), sampler.shift)).item() == pytest.approx(expected, rel=1e-6)
    assert torch.all(sampler.cdf(GRID).diff() >= 0)


def test_shifted_uniform_sampler_is_diffsynths_training_table():
    # DiffSynth: sigma_i = shift_5(linspace(1, 0, 1001)[:-1]), index i uniform (wan_arch.md §4.3)
    table = shift_sigma(torch.linspace(1, 0, 1001, dtype=torch.float64)[:-1], 5.0)
    u = 1 - torch.arange(1000, dtype=torch.float64) / 1000
    torch.testing.assert_close(SigmaSampler("uniform", shift=5.0).icdf(u), table)


def test_logit_normal_sampler_matches_its_definition():
    # sigmoid(N(m, s^2)), then shifted: the median is shift(sigmoid(m))
    sampler = SigmaSampler("logit_normal", mean=0.7, std=0.5, shift=3.0)
    assert sampler.icdf(0.5).item() == pytest.approx(shift_sigma(1 / (1 + math.exp(-0.7)), 3.0), abs=1e-6)
    direct = shift_sigma(torch.sigmoid(0.7 + 0.5 * torch.randn(20_000, dtype=torch.float64)), 3.0).sort().values
    assert ks_distance(direct, sampler.cdf(direct).double()) < 0.02


def test_sampling_is_reproducible_from_the_generator():
    sampler = SigmaSampler(shift=5.0)
    a = sampler.sample(64, generator=torch.Generator().manual_seed(7), low=0.2, high=0.6)
    b = sampler.sample(64, generator=torch.Generator().manual_seed(7), low=0.2, high=0.6)
    assert torch.equal(a, b)


@pytest.mark.parametrize("field,kwargs", [
    ("kind", dict(kind="beta")), ("std", dict(std=0.0)), ("shift", dict(shift=-1.0)), ("mean", dict(mean=math.nan)),
])
def test_bad_sampler_config_names_the_field_and_what_is_allowed(field, kwargs):
    with pytest.raises(ValueError, match=f"flow.sampler.{field}=") as info:
        SigmaSampler(**kwargs)
    assert "allowed" in str(info.value)
    assert set(SAMPLER_KINDS) == {"uniform", "logit_normal"}


def test_bad_sample_range_raises():
    with pytest.raises(ValueError, match="low"):
        SigmaSampler().sample(4, low=0.5, high=0.5)


# --- experts -----------------------------------------------------------------------------------------------------

def test_expert_names_are_the_model_sizes_names():
    from wan_train.models.sizes import EXPERTS
    assert EXPERT_NAMES == EXPERTS


@pytest.mark.parametrize("boundary", [0.875, 0.9])
def test_expert_ranges_partition_the_unit_interval_at_the_boundary(boundary):
    high, low = expert_range("high_noise", boundary), expert_range("low_noise", boundary)
    assert (high.low, high.high, low.low, low.high) == (boundary, 1.0, 0.0, boundary)
    below = math.nextafter(boundary, 0.0)
    points = GRID.tolist() + [boundary, below, math.nextafter(boundary, 1.0)]
    for sigma in points:
        assert high.contains(sigma) != low.contains(sigma), sigma
        assert expert_for_sigma(sigma, boundary) == ("high_noise" if high.contains(sigma) else "low_noise")
    assert expert_for_sigma(boundary, boundary) == "high_noise" and expert_for_sigma(below, boundary) == "low_noise"
    grid32 = torch.cat([GRID.float(), torch.tensor([boundary])])
    assert torch.all(high.contains(grid32) ^ low.contains(grid32))
    assert all(expert_for_sigma(s, boundary) == ("high_noise" if high.contains(s) else "low_noise") for s in grid32)


def test_whole_range_without_an_expert():
    full = expert_range(None, None)
    assert full == ExpertRange(0.0, 1.0) and full.contains(0.0) and full.contains(1.0)
    assert expert_range(None, 0.875) == full


def test_diffsynth_index_boundaries_land_on_the_official_boundaries():
    # DiffSynth trains the high expert on index fractions [0, 0.417) (T2V) / [0, 0.358) (I2V) of its shift-5 table;
    # fraction f is the unshifted sigma 1 - f (wan_arch.md §4.3)
    assert to_timestep(shift_sigma(1 - 0.417, 5.0)) == pytest.approx(874.8, abs=0.05)
    assert shift_sigma(0.583, 5.0) == pytest.approx(0.875, abs=1e-3)
    assert shift_sigma(1 - 0.358, 5.0) == pytest.approx(0.9, abs=1e-3)


def test_expert_errors_are_clear():
    with pytest.raises(ValueError, match="expert='mid_noise'.*high_noise"):
        expert_range("mid_noise", 0.875)
    with pytest.raises(ValueError, match="boundary is None"):
        expert_range("low_noise", None)
    with pytest.raises(ValueError, match="divide by 1000"):
        expert_range("high_noise", 875)
    with pytest.raises(ValueError, match="low"):
        ExpertRange(0.5, 0.2)


# --- loss --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_perfect_prediction_has_zero_loss(weighting):
    target = torch.randn(2, 4, 3, 4, 4)
    sigma = torch.tensor([0.3, 0.8])
    assert torch.equal(per_sample_loss(target.clone(), target, sigma, weighting=weighting), torch.zeros(2))


def test_loss_is_the_mean_squared_error_per_sample():
    target = torch.randn(2, 4, 3, 4, 4)
    pred = target + torch.tensor([1.0, 2.0]).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(per_sample_loss(pred, target, torch.tensor([0.3, 0.8])), torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(flow_loss(pred, target, 0.5), torch.tensor(2.5))


def test_frame_mask_excludes_exactly_the_masked_frames():
    mask = conditioning_frame_mask(4, (0,))
    assert mask.tolist() == [False, True, True, True]
    target = torch.randn(2, 4, 4, 3, 3)
    pred = target + 1.0
    base = per_sample_loss(pred, target, 0.5, frame_mask=mask)
    torch.testing.assert_close(base, torch.ones(2))  # the mean runs over the kept frames only
    changed_masked = pred.clone()
    changed_masked[:, :, 0] += 100.0
    assert torch.equal(per_sample_loss(changed_masked, target, 0.5, frame_mask=mask), base)
    changed_kept = pred.clone()
    changed_kept[:, :, 1] += 100.0
    assert torch.all(per_sample_loss(changed_kept, target, 0.5, frame_mask=mask) > base)
    masked_nan = pred.clone()
    masked_nan[:, :, 0] = math.nan  # whatever the model says on a conditioning frame is ignored
    assert torch.equal(per_sample_loss(masked_nan, target, 0.5, frame_mask=mask), base)


def test_frame_mask_per_sample():
    target = torch.zeros(2, 1, 3, 1, 1)
    pred = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1, 1).expand(2, 1, 3, 1, 1)
    mask = torch.stack([conditioning_frame_mask(3), conditioning_frame_mask(3, (0, -1))])
    torch.testing.assert_close(per_sample_loss(pred, target, 0.5, frame_mask=mask), torch.tensor([14 / 3, 4.0]))


def test_conditioning_frame_mask_errors():
    with pytest.raises(ValueError, match="latent frame index"):
        conditioning_frame_mask(3, (3,))
    with pytest.raises(ValueError, match="no frame is left"):
        conditioning_frame_mask(1, (0,))


def test_weightings_at_known_sigmas():
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.equal(loss_weight(sigma, "none"), torch.ones(4))
    torch.testing.assert_close(loss_weight(sigma, "cosmap"),
                               torch.tensor([2 / math.pi, 2 / (math.pi * 0.625), 4 / math.pi, 2 / math.pi]))
    torch.testing.assert_close(loss_weight(sigma[1:], "sigma_sqrt"), torch.tensor([16.0, 4.0, 1.0]))
    target = torch.randn(2, 2, 1, 2, 2)
    torch.testing.assert_close(per_sample_loss(target + 1, target, torch.tensor([0.5, 0.25]), weighting="sigma_sqrt"),
                               torch.tensor([4.0, 16.0]))


def test_bf16_inputs_give_a_float32_loss_computed_in_float32():
    target = torch.randn(2, 4, 3, 8, 8).bfloat16()
    pred = (target.float() + 0.01 * torch.randn(2, 4, 3, 8, 8)).bfloat16()
    loss = per_sample_loss(pred, target, torch.tensor([0.2, 0.9]), weighting="cosmap")
    assert loss.dtype == torch.float32 and flow_loss(pred, target, 0.5).dtype == torch.float32
    expected = per_sample_loss(pred.float(), target.float(), torch.tensor([0.2, 0.9]), weighting="cosmap")
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_bad_loss_inputs_raise():
    x = torch.zeros(2, 1, 2, 1, 1)
    with pytest.raises(ValueError, match="flow.weighting='snr'.*allowed"):
        per_sample_loss(x, x, 0.5, weighting="snr")
    with pytest.raises(ValueError, match="sigma"):
        per_sample_loss(x, x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="frame_mask"):
        per_sample_loss(x, x, 0.5, frame_mask=torch.ones(3, dtype=torch.bool))


# --- held-out loss -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,expert,boundary", CASES, ids=CASE_IDS)
def test_held_out_sigmas_are_sorted_fixed_quantiles_inside_the_range(sampler, expert, boundary):
    rng = expert_range(expert, boundary)
    sigmas = held_out_sigmas(sampler, 16, rng)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (16,)
    assert rng.contains(sigmas).all() and torch.all(sigmas.diff() > 0)
    assert torch.equal(sigmas, held_out_sigmas(sampler, 16, rng))
    quantiles = truncated_cdf(sampler, sigmas, rng.low, rng.high)
    torch.testing.assert_close(quantiles, (torch.arange(16, dtype=torch.float64) + 0.5) / 16, rtol=0, atol=1e-6)


def test_held_out_noise_is_fixed_by_seed_and_index_alone():
    torch.manual_seed(1)
    a = held_out_noise((2, 3, 4), seed=0, index=5)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    assert torch.equal(held_out_noise((2, 3, 4), seed=0, index=5), a)
    assert torch.equal(torch.get_rng_state(), state)  # does not consume the global RNG either
    assert not torch.equal(held_out_noise((2, 3, 4), seed=0, index=6), a)
    assert not torch.equal(held_out_noise((2, 3, 4), seed=1, index=5), a)
    assert torch.equal(held_out_noise((2, 3, 4), seed=0, index=5, dtype=torch.bfloat16), a.bfloat16())
    assert abs(held_out_noise((100_000,), seed=3, index=0).std().item() - 1.0) < 0.02
