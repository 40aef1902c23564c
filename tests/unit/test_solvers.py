"""The sampling grids and the stateless solvers: grid shape and validation, exactness on straight paths, observed
order of convergence, the after_step / velocity call contract, and the Wan2.2 MoE expert split of the official grids.
Parity with diffusers' schedulers is in tests/parity/test_solvers_vs_diffusers.py."""

import math

import numpy as np
import pytest
import torch

from wan_train.flow import expert_for_sigma, shift_sigma
from wan_train.inference.schedules import sampling_sigmas
from wan_train.inference.solvers import SOLVERS, Solver, dpmpp_2m, euler, get_solver, unipc

SOLVER_FNS = [euler, unipc, dpmpp_2m]


# --------------------------------------------------------------------------------------------------------- grids

@pytest.mark.parametrize("steps,shift,sigma_max", [(1, 1.0, 1.0), (10, 5.0, 1.0), (40, 12.0, 0.999), (50, 3.0, 0.5)])
def test_grid_shape_endpoints_and_shift(steps, shift, sigma_max):
    g = sampling_sigmas(steps, shift=shift, sigma_max=sigma_max)
    assert g.dtype == torch.float64 and g.device.type == "cpu" and g.shape == (steps + 1,)
    assert g[-1].item() == 0.0
    assert torch.all(g[1:] < g[:-1])
    base = torch.from_numpy(np.linspace(sigma_max, 0.0, steps + 1))
    torch.testing.assert_close(g, shift_sigma(base, shift), rtol=0, atol=1e-15)
    # shift s: sigma' = s sigma / (1 + (s - 1) sigma), checked independently of shift_sigma
    torch.testing.assert_close(g, shift * base / (1 + (shift - 1) * base), rtol=1e-12, atol=1e-15)
    assert g[0].item() == pytest.approx(shift * sigma_max / (1 + (shift - 1) * sigma_max), rel=1e-15)


def test_official_grids():
    """UniPC: linspace(0.999, 0, n + 1)[:-1] shifted, + final 0; DPM++ / Euler: linspace(1, 0, n + 1) shifted."""
    steps, shift = 4, 5.0
    unipc_grid = sampling_sigmas(steps, shift=shift, sigma_max=0.999)
    expected = [shift * s / (1 + (shift - 1) * s) for s in (0.999, 0.74925, 0.4995, 0.24975)] + [0.0]
    assert unipc_grid.tolist() == pytest.approx(expected, rel=1e-14)
    one = sampling_sigmas(steps, shift=shift)
    assert one[0].item() == 1.0 and one.tolist() == pytest.approx([1.0, 15 / 16, 5 / 6, 0.625, 0.0], rel=1e-14)
    assert get_solver("unipc").sigma_max == 0.999
    assert get_solver("euler").sigma_max == get_solver("dpmpp_2m").sigma_max == 1.0
    assert torch.equal(get_solver("unipc").sigmas(steps, shift=shift), unipc_grid)
    assert torch.equal(get_solver("dpmpp_2m").sigmas(steps, shift=shift), one)


def test_shift_one_is_linear():
    assert sampling_sigmas(4, shift=1.0).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0, shift=5.0), "steps"), (dict(steps=2.0, shift=5.0), "steps"), (dict(steps=True, shift=5.0), "steps"),
    (dict(steps=10, shift=0.0), "shift"), (dict(steps=10, shift=-1.0), "shift"),
    (dict(steps=10, shift=5.0, sigma_max=0.0), "sigma_max"), (dict(steps=10, shift=5.0, sigma_max=1.5), "sigma_max"),
    (dict(steps=10, shift=5.0, sigma_max=float("nan")), "sigma_max"),
])
def test_grid_bad_arguments(kw, match):
    steps = kw.pop("steps")
    with pytest.raises(ValueError, match=match):
        sampling_sigmas(steps, **kw)


# ------------------------------------------------------------------------------------------------------ registry

def test_registry():
    assert set(SOLVERS) == {"euler", "unipc", "dpmpp_2m"}
    for name, solver in SOLVERS.items():
        assert isinstance(solver, Solver) and solver.name == name and get_solver(name) is solver
    assert [get_solver(n).fn for n in ("euler", "unipc", "dpmpp_2m")] == SOLVER_FNS
    # the official schedulers store int64 timesteps; DiffSynth's Euler feeds float 1000 sigma
    assert get_solver("unipc").integer_timesteps and get_solver("dpmpp_2m").integer_timesteps
    assert not get_solver("euler").integer_timesteps
    with pytest.raises(ValueError, match="'euler', 'unipc', 'dpmpp_2m'"):
        get_solver("ddim")


# ----------------------------------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("fn", SOLVER_FNS)
@pytest.mark.parametrize("steps,shift,sigma_max", [(1, 5.0, 1.0), (2, 3.0, 0.999), (7, 12.0, 1.0), (25, 5.0, 0.999)])
def test_exact_on_constant_velocity(fn, steps, shift, sigma_max):
    """x_sigma = (1 - sigma) x0 + sigma noise has the constant velocity noise - x0: every solver follows it exactly
    (each state on the line, x0 at the end), including from sigma_0 = 1 where lambda = -inf."""
    g = torch.Generator().manual_seed(steps)
    x0, noise = torch.randn(2, 4, 3, 5, 6, generator=g), torch.randn(2, 4, 3, 5, 6, generator=g)
    sigmas = sampling_sigmas(steps, shift=shift, sigma_max=sigma_max)
    states = []

    def record(x, i):
        states.append(x)
        return x

    x = (1 - float(sigmas[0])) * x0 + float(sigmas[0]) * noise
    out = fn(lambda x, i: noise - x0, x, sigmas, after_step=record)
    assert out.dtype == torch.float32 and out.shape == x0.shape
    torch.testing.assert_close(out, x0, rtol=0, atol=2e-6)
    for i, state in enumerate(states):
        s = float(sigmas[i + 1])
        torch.testing.assert_close(state, (1 - s) * x0 + s * noise, rtol=0, atol=2e-6)


def test_first_order_steps_are_euler():
    """The multistep solvers' first step (no history) and a one-step run are exactly Euler's step in sigma."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 8, generator=g), torch.randn(8, 8, generator=g) / 3

    def velocity(x, i):
        return torch.tanh(x @ w) + 0.1 * i

    def first_state(fn, sigmas):
        states = []
        fn(velocity, x, sigmas, after_step=lambda y, i: states.append(y) or y)
        return states[0]

    for steps in (1, 6):
        sigmas = sampling_sigmas(steps, shift=5.0)
        expected = first_state(euler, sigmas)
        torch.testing.assert_close(expected, x + (float(sigmas[1]) - float(sigmas[0])) * velocity(x, 0))
        for fn in (unipc, dpmpp_2m):
            torch.testing.assert_close(first_state(fn, sigmas), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- order

MU, STD = 0.5, 1.5  # data ~ N(MU, STD^2) elementwise


def gaussian_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact flow-matching velocity E[noise - x0 | x_sigma = x] of Gaussian data: linear in x, nonlinear in sigma.
    Its ODE solution is x(sigma) = (1 - sigma) MU + sqrt(var(sigma)) z, var = (1 - sigma)^2 STD^2 + sigma^2."""
    var = (1 - sigma) ** 2 * STD**2 + sigma**2
    return (sigma - (1 - sigma) * STD**2) / var * (x - (1 - sigma) * MU) - MU


def final_error(solver: Solver, steps: int, shift: float) -> float:
    sigmas = solver.sigmas(steps, shift=shift)
    z = torch.linspace(-3, 3, 101, dtype=torch.float64)
    s0 = float(sigmas[0])
    x = (1 - s0) * MU + math.sqrt((1 - s0) ** 2 * STD**2 + s0**2) * z  # on the exact trajectory
    out = solver.fn(lambda x, i: gaussian_velocity(x.double(), float(sigmas[i])).float(), x.float(), sigmas)
    return (out.double() - (MU + STD * z)).abs().max().item()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_observed_order(shift):
    """Error ~ C / steps^p: p ~ 1 for Euler, ~ 2 for the second-order multistep solvers (measured here: UniPC 2.1,
    DPM++(2M) 1.75, Euler 0.99; the lambda steps next to sigma = 0 do not shrink on these grids, which keeps the
    multistep solvers a little off their asymptotic order), and they are far more accurate at equal steps."""
    steps = np.array([64, 128, 256])
    errors = {name: [final_error(s, int(n), shift) for n in steps] for name, s in SOLVERS.items()}
    order = {name: -np.polyfit(np.log(steps), np.log(e), 1)[0] for name, e in errors.items()}
    assert 0.85 < order["euler"] < 1.15, order
    assert 1.5 < order["unipc"] < 2.6, order
    assert 1.5 < order["dpmpp_2m"] < 2.6, order
    for name in ("unipc", "dpmpp_2m"):
        assert all(e < 0.2 * e_euler for e, e_euler in zip(errors[name], errors["euler"], strict=True)), errors


# ----------------------------------------------------------------------------------------------- call contract

@pytest.mark.parametrize("fn", SOLVER_FNS)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_velocity_and_after_step_calls(fn, steps):
    sigmas = sampling_sigmas(steps, shift=5.0)
    calls = []
    g = torch.Generator().manual_seed(0)
    first = torch.randn(1, 4, 1, 4, 4, generator=g)

    def velocity(x, i):
        calls.append(("v", i))
        torch.testing.assert_close(x[:, :, :1], first, rtol=0, atol=0)  # the model always sees the pasted frame
        return torch.sin(x) + x.mean()

    def paste(x, i):
        calls.append(("after", i))
        x = x.clone()
        x[:, :, :1] = first
        return x

    x = torch.randn(1, 4, 3, 4, 4, generator=g)
    x[:, :, :1] = first
    out = fn(velocity, x, sigmas, after_step=paste)
    assert calls == [c for i in range(steps) for c in (("v", i), ("after", i))]
    assert torch.equal(out[:, :, :1], first)  # the return value of after_step is the state
    assert not torch.equal(out[:, :, 1:], x[:, :, 1:])


@pytest.mark.parametrize("fn", SOLVER_FNS)
def test_stateless_and_dtypes(fn):
    """Two runs give identical results (no state kept between calls); float64 / bfloat16 inputs and velocities run
    in float32; the input is not modified."""
    sigmas = sampling_sigmas(6, shift=3.0, sigma_max=0.999)
    x = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)
    x_copy = x.clone()

    def velocity(x, i):
        assert x.dtype == torch.float32
        return (torch.tanh(x) * (i + 1)).bfloat16()

    a, b = fn(velocity, x, sigmas), fn(velocity, x, sigmas.tolist())
    assert a.dtype == torch.float32 and a.shape == x.shape
    assert torch.equal(a, b) and torch.equal(x, x_copy)


@pytest.mark.parametrize("fn", SOLVER_FNS)
def test_bad_inputs(fn):
    x = torch.randn(1, 2, 1, 2, 2)
    good = sampling_sigmas(3, shift=3.0)
    for bad in ([1.0], [1.0, 0.5, 0.5, 0.0], [0.0, 0.5, 1.0], [1.5, 0.5, 0.0], [1.0, float("nan"), 0.0]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            fn(lambda x, i: x, x, bad)
    with pytest.raises(ValueError, match="velocity"):
        fn(lambda x, i: x[0], x, good)
    with pytest.raises(ValueError, match="after_step"):
        fn(lambda x, i: x, x, good, after_step=lambda x, i: None)
    with pytest.raises(TypeError, match="floating-point"):
        fn(lambda x, i: x, torch.ones(1, 2, dtype=torch.long), good)


# ------------------------------------------------------------------------------------------------ MoE expert split

@pytest.mark.parametrize("steps,shift,boundary,high", [
    (40, 12.0, 0.875, 26),  # Wan2.2 T2V-A14B defaults (wan_arch.md §4.3)
    (40, 5.0, 0.9, 15),  # Wan2.2 I2V-A14B defaults
])
@pytest.mark.parametrize("sigma_max", [0.999, 1.0])
def test_moe_expert_split(steps, shift, boundary, high, sigma_max):
    """Steps whose sigma_i (the noise level the model runs at) is >= boundary go to the high-noise expert; the same
    counts hold on the sigma_max = 1 grid, and on the official int64 timesteps floor(1000 sigma) >= 1000 boundary."""
    sigmas = sampling_sigmas(steps, shift=shift, sigma_max=sigma_max)
    experts = [expert_for_sigma(sigmas[i], boundary) for i in range(steps)]
    assert experts.count("high_noise") == high and experts.count("low_noise") == steps - high
    assert experts == sorted(experts)  # "high_noise" < "low_noise": all high steps come first
    assert int(((sigmas[:-1] * 1000).floor() >= boundary * 1000).sum()) == high
