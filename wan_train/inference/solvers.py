"""Stateless ODE solvers of the rectified flow dx/dsigma = v(x, sigma) (wan_arch.md §4.1-4.2), one signature each:

    solver(velocity, x, sigmas, *, after_step=None) -> x at sigmas[-1]

- velocity(x, i) returns the model's velocity v = noise - x0 at noise level sigmas[i] for the state x (the caller
  owns the model call: timestep, guidance, MoE expert, conditioning); it is called exactly once per step i.
- after_step(x, i), if given, is applied to the new state after step i and its return value is the state from then
  on (TI2V pastes its clean first latent frame back here, as the official loop does after scheduler.step).
- sigmas is the grid of schedules.sampling_sigmas: steps + 1 strictly decreasing noise levels in [0, 1].
- x is any shape (a latent [B, C, F, H, W]); the state is float32 throughout (step coefficients are computed in
  float64 from the grid, applied as scalars) and the result is float32 of x's shape. History (previous model
  outputs, UniPC's last_sample) lives in locals: nothing is kept between calls.

The multistep solvers work in the log-SNR time lambda = log(alpha / sigma) of the VP view of the same path,
x_sigma = alpha x0 + sigma noise with alpha = 1 - sigma (diffusers' _sigma_to_alpha_sigma_t for flow sigmas), on the
data prediction x0 = x - sigma v. lambda is -inf at sigma = 1 and +inf at sigma = 0, so the step to sigma = 0 has
e^{-h} = 0 and lands on the x0 prediction; a history point at sigma = 1 has r = inf and drops out. Their first order
step is exactly Euler: sigma_t/sigma_s x + alpha_t (1 - e^{-h}) x0 = x + (sigma_t - sigma_s) v.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch

from wan_train.inference.schedules import sampling_sigmas

Velocity = Callable[[torch.Tensor, int], torch.Tensor]  # velocity(x, i): the model's velocity at sigmas[i] for state x
AfterStep = Callable[[torch.Tensor, int], torch.Tensor]  # after_step(x, i): applied to the new state after step i


def _grid(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """The grid as Python floats (one host copy per call), checked: >= 2 entries, in [0, 1], strictly decreasing."""
    values = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    ok = len(values) >= 2 and all(0.0 <= s <= 1.0 for s in values)  # NaN fails the range test
    if not (ok and all(a > b for a, b in pairwise(values))):
        shown = values if len(values) <= 8 else [*values[:4], "...", *values[-2:]]
        raise ValueError(f"sigmas={shown} must be >= 2 strictly decreasing noise levels in [0, 1], e.g. "
                         "schedules.sampling_sigmas(steps, shift=...)")
    return values


def _lambda(sigma: float) -> float:
    """log(alpha / sigma) with alpha = 1 - sigma: the half log-SNR of the VP view, -inf at sigma = 1, +inf at 0."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log1p(-sigma) - math.log(sigma)


def _state(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (the initial noisy latent), got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    return x.to(torch.float32)


def _velocity(velocity: Velocity, x: torch.Tensor, i: int) -> torch.Tensor:
    v = velocity(x, i)
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"velocity(x, {i}) returned {got}; expected a tensor of the state's shape {tuple(x.shape)}")
    return v.float()


def _after(after_step: AfterStep | None, x: torch.Tensor, i: int) -> torch.Tensor:
    if after_step is None:
        return x
    out = after_step(x, i)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"after_step(x, {i}) returned {got}; it must return the new state, shape {tuple(x.shape)}")
    return out.float()


def _first_order(x: torch.Tensor, x0: torch.Tensor, sigma_s: float, sigma_t: float, h: float) -> torch.Tensor:
    """The first-order exponential-integrator step in data prediction (DPM-Solver++(1) = DDIM; Lu et al. 2022,
    arXiv 2211.01095, §4): x_t = sigma_t/sigma_s x_s - alpha_t (e^{-h} - 1) x0, h = lambda_t - lambda_s."""
    return (sigma_t / sigma_s) * x - ((1.0 - sigma_t) * math.expm1(-h)) * x0


def euler(velocity: Velocity, x: torch.Tensor, sigmas, *, after_step: AfterStep | None = None) -> torch.Tensor:
    """Euler in sigma, x <- x + (sigma_{i+1} - sigma_i) v (DiffSynth's FlowMatchScheduler.step, diffusers'
    FlowMatchEulerDiscreteScheduler.step). Order 1."""
    s = _grid(sigmas)
    x = _state(x)
    for i in range(len(s) - 1):
        x = x + (s[i + 1] - s[i]) * _velocity(velocity, x, i)
        x = _after(after_step, x, i)
    return x


def dpmpp_2m(velocity: Velocity, x: torch.Tensor, sigmas, *, after_step: AfterStep | None = None) -> torch.Tensor:
    """Multistep DPM-Solver++(2M), midpoint form (Lu et al. 2022, arXiv 2211.01095, Alg. 2), as the official
    FlowDPMSolverMultistepScheduler / diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, solver_type="midpoint", final_sigmas_type="zero"): first order at the first step (no history)
    and at the last (lower_order_final), otherwise the first-order update with x0 replaced by
    D = x0_i + (x0_i - x0_{i-1}) / (2 r), r = h_{i-1} / h_i the ratio of consecutive lambda steps."""
    s = _grid(sigmas)
    lam = [_lambda(v) for v in s]
    steps = len(s) - 1
    x = _state(x)
    prev_x0 = None  # [shape of x] the data prediction of the previous step
    for i in range(steps):
        x0 = x - s[i] * _velocity(velocity, x, i)
        h = lam[i + 1] - lam[i]
        d = x0
        if prev_x0 is not None and i < steps - 1:
            r = (lam[i] - lam[i - 1]) / h  # inf when sigmas[i - 1] = 1: the difference term vanishes
            d = x0 + (0.5 / r) * (x0 - prev_x0)
        x = _first_order(x, d, s[i], s[i + 1], h)
        prev_x0 = x0
        x = _after(after_step, x, i)
    return x


def _unic_weights(h: float, r: float) -> tuple[float, float]:
    """The order-2 UniC weights (rho_prev, rho_t) with B(h) = e^{-h} - 1 ("bh2", data prediction, hh = -h): solve
    [[1, 1], [r, 1]] rho = [g1, 2 g2] / B(h), g1 = (e^{hh} - 1)/hh - 1 = hh phi_2(hh), g2 = g1/hh - 1/2 = hh phi_3(hh)
    (Zhao et al. 2023, arXiv 2302.04867, §3.1 UniC-p with its linear system R_p rho = g_p / B(h), p = 2)."""
    hh = -h
    b_h = math.expm1(hh)
    g1 = b_h / hh - 1.0
    g2 = g1 / hh - 0.5
    b1, b2 = g1 / b_h, 2.0 * g2 / b_h
    rho_prev = (b1 - b2) / (1.0 - r)  # 0 when r = -inf (the older point at sigma = 1)
    return rho_prev, b1 - rho_prev


def _unic(last: torch.Tensor, x0_hist: list[torch.Tensor], x0_t: torch.Tensor, s: list[float], lam: list[float],
          i: int) -> torch.Tensor:
    """UniC corrector of the step i-1 -> i (Zhao et al. 2023, §3.1): re-takes that step from `last` (the state it
    started from, not the pasted/predicted state) with the fresh model output x0_t at sigma_i added to the history.
    Order min(2, i): the order the predictor of step i-1 used."""
    x0_s = x0_hist[-1]
    h = lam[i] - lam[i - 1]
    base = _first_order(last, x0_s, s[i - 1], s[i], h)
    b_h = math.expm1(-h)
    if i == 1:  # UniC-1: rho_t = 1/2
        corr = 0.5 * (x0_t - x0_s)
    else:
        r = (lam[i - 2] - lam[i - 1]) / h
        rho_prev, rho_t = _unic_weights(h, r)
        corr = (rho_prev / r) * (x0_hist[-2] - x0_s) + rho_t * (x0_t - x0_s)
    return base - ((1.0 - s[i]) * b_h) * corr


def _unip(x: torch.Tensor, x0_hist: list[torch.Tensor], s: list[float], lam: list[float], i: int,
          order: int) -> torch.Tensor:
    """UniP-`order` predictor of step i -> i+1 (Zhao et al. 2023, §3.2, B(h) = e^{-h} - 1): order 2 adds
    -alpha_t B(h) rho D1 with D1 = (x0_{i-1} - x0_i) / r, r = (lambda_{i-1} - lambda_i) / h, rho = 1/2."""
    x0_s = x0_hist[-1]
    h = lam[i + 1] - lam[i]
    x_t = _first_order(x, x0_s, s[i], s[i + 1], h)
    if order == 2:
        r = (lam[i - 1] - lam[i]) / h  # -inf when sigmas[i - 1] = 1: D1 = 0
        x_t = x_t - ((1.0 - s[i + 1]) * math.expm1(-h) * 0.5 / r) * (x0_hist[-2] - x0_s)
    return x_t


def unipc(velocity: Velocity, x: torch.Tensor, sigmas, *, after_step: AfterStep | None = None) -> torch.Tensor:
    """UniPC (Zhao et al. 2023, arXiv 2302.04867): UniP-2 predictor + UniC corrector, B(h) = e^{-h} - 1 ("bh2"), data
    prediction, as the official FlowUniPCMultistepScheduler / diffusers' UniPCMultistepScheduler(prediction_type=
    "flow_prediction", use_flow_sigmas=True, solver_order=2, solver_type="bh2", predict_x0=True,
    lower_order_final=True, final_sigmas_type="zero"). Per step i: evaluate the model at the current state x_i;
    unless i = 0, re-take step i-1 from its starting state with that output (UniC; the corrected state replaces x_i);
    predict step i from it with order min(2, i + 1, steps - i) (warm-up, lower_order_final: the last step is first
    order). The corrected state drops what after_step wrote into x_i except through the model output, as diffusers'
    last_sample does; every update is elementwise, so positions that after_step overwrites after every step (the TI2V
    first frame) end up the same either way."""
    s = _grid(sigmas)
    lam = [_lambda(v) for v in s]
    steps = len(s) - 1
    x = _state(x)
    x0_hist: list[torch.Tensor] = []  # data predictions of the last two steps, oldest first
    last = x  # the state step i-1 started from (diffusers' last_sample)
    for i in range(steps):
        x0 = x - s[i] * _velocity(velocity, x, i)
        if i > 0:
            x = _unic(last, x0_hist, x0, s, lam, i)
        x0_hist = [*x0_hist[-1:], x0]
        last = x
        x = _unip(x, x0_hist, s, lam, i, order=min(2, i + 1, steps - i))
        x = _after(after_step, x, i)
    return x


@dataclass(frozen=True)
class Solver:
    """A registered solver: its function, the sigma_max of the grid it is used with by default, and whether the
    official loop feeds the model integer timesteps with it (the official Flow*Scheduler and diffusers' UniPC / DPM++
    store timesteps as int64, i.e. floor(1000 sigma); DiffSynth's and diffusers' flow-matching Euler keep the float
    1000 sigma). The solver itself never sees timesteps: this only tells the caller's velocity what to feed."""

    name: str
    fn: Callable[..., torch.Tensor]
    sigma_max: float
    integer_timesteps: bool = False

    def sigmas(self, steps: int, *, shift: float) -> torch.Tensor:
        """This solver's default grid: sampling_sigmas(steps, shift=shift, sigma_max=self.sigma_max)."""
        return sampling_sigmas(steps, shift=shift, sigma_max=self.sigma_max)


SOLVERS: dict[str, Solver] = {
    s.name: s
    for s in (
        Solver("euler", euler, sigma_max=1.0),  # DiffSynth's default grid, float timesteps
        Solver("unipc", unipc, sigma_max=0.999, integer_timesteps=True),  # official default (fm_solvers_unipc.py)
        Solver("dpmpp_2m", dpmpp_2m, sigma_max=1.0, integer_timesteps=True),  # official get_sampling_sigmas
    )
}


def get_solver(name: str) -> Solver:
    if not isinstance(name, str) or name not in SOLVERS:
        raise ValueError(f"solver={name!r} is not allowed; allowed: {', '.join(repr(n) for n in SOLVERS)}")
    return SOLVERS[name]
