"""The training distribution of the noise level sigma (the final, shifted value the DiT sees).

A base distribution on [0, 1] pushed through shift_sigma:
- "uniform": base U[0, 1]. With shift 5 this is, up to the 1000-entry discretisation, DiffSynth-Studio's Wan
  sampler (uniform index into the shifted linspace(1, 0, 1001)[:-1] table; wan_arch.md §4.3).
- "logit_normal": base sigmoid(N(mean, std^2)), SD3's pi_ln(t; m, s) (Esser et al. 2024 §3.1, eq. 19), which
  the Wan report is said to use (unverified, wan_arch.md §8.1).

Because shift_sigma is increasing, the CDF of the final sigma is F(sigma) = F_base(unshift_sigma(sigma)) and its
inverse is shift_sigma(F_base^-1(u)). Sampling a sub-range [low, high] (one MoE expert) truncates the distribution
rather than rescaling it: u ~ U[F(low), F(high)], sigma = F^-1(u). This is musubi-tuner's
--preserve_distribution_shape, and it equals rejection sampling from the full distribution, so each expert sees
the same density (up to normalisation) it would see in a joint run.

cdf/icdf run in float64 (logit and ndtri lose accuracy in the tails in float32) and return float32 unless given
float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wan_train.flow.schedule import shift_sigma, unshift_sigma

SAMPLER_KINDS = ("uniform", "logit_normal")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _as64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=x.device if isinstance(x, torch.Tensor) else None)


def _out(value: torch.Tensor, like) -> torch.Tensor:
    keep64 = isinstance(like, torch.Tensor) and like.dtype == torch.float64
    return value if keep64 else value.float()


def _float32_bounds(low: float, high: float) -> tuple[float, float]:
    """The float32 values to clamp samples to so that, compared as float32 or float64, they satisfy
    low <= sigma and (sigma < high, or sigma <= 1 when high == 1): ExpertRange.contains' half-open convention,
    so a sample never rounds onto the other expert's side of the boundary."""
    lo = torch.tensor(low, dtype=torch.float32)
    if lo.item() < low:
        lo = torch.nextafter(lo, torch.tensor(math.inf))
    hi = torch.tensor(high, dtype=torch.float32)
    if high < 1.0:
        hi = torch.nextafter(hi, torch.tensor(-math.inf))
    return lo.item(), hi.item()


@dataclass(frozen=True)
class SigmaSampler:
    kind: str = "logit_normal"  # one of SAMPLER_KINDS
    mean: float = 0.0  # logit-normal location m (of logit(base sigma)); ignored by "uniform"
    std: float = 1.0  # logit-normal scale s > 0; ignored by "uniform"
    shift: float = 1.0  # applied on top: sigma = shift_sigma(base sample, shift)

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in SAMPLER_KINDS:
            problems.append(f"flow.sampler.kind={self.kind!r} is not allowed; allowed: {', '.join(SAMPLER_KINDS)}")
        if not _is_number(self.mean):
            problems.append(f"flow.sampler.mean={self.mean!r} is not allowed; allowed: a finite number")
        if not (_is_number(self.std) and self.std > 0):
            problems.append(f"flow.sampler.std={self.std!r} is not allowed; allowed: a finite number > 0")
        if not (_is_number(self.shift) and self.shift > 0):
            problems.append(f"flow.sampler.shift={self.shift!r} is not allowed; allowed: a finite number > 0")
        if problems:
            raise ValueError("invalid sigma sampler: " + "; ".join(problems))

    def _base_cdf(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "uniform":
            return x.clamp(0.0, 1.0)
        # P(sigmoid(m + s z) <= x) = Phi((logit(x) - m) / s); logit(0) = -inf and logit(1) = inf map to 0 and 1.
        # Phi(z) = erfc(-z / sqrt 2) / 2 rather than torch.special.ndtr, which is (1 + erf) / 2 in torch 2.x and
        # loses all precision below z ~ -8 (ndtr(-8.5) == 0 in float64): small sigmas at shift 12 land there.
        z = (torch.logit(x) - self.mean) / self.std
        return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))

    def _base_icdf(self, u: torch.Tensor) -> torch.Tensor:
        if self.kind == "uniform":
            return u.clamp(0.0, 1.0)
        return torch.sigmoid(self.mean + self.std * torch.special.ndtri(u))

    def cdf(self, sigma) -> torch.Tensor:
        """P(sampled sigma <= sigma) for the untruncated distribution; sigma in [0, 1]."""
        return _out(self._base_cdf(unshift_sigma(_as64(sigma), self.shift)), sigma)

    def icdf(self, u) -> torch.Tensor:
        """The sigma with cdf(sigma) = u; u in [0, 1]."""
        return _out(shift_sigma(self._base_icdf(_as64(u)), self.shift), u)

    def quantile(self, q, *, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """The q-quantile (q in [0, 1], any shape) of the distribution truncated to [low, high]: icdf of
        cdf(low) + q * (cdf(high) - cdf(low)). float32; the upper end is excluded unless it is 1 (see
        _float32_bounds). sample() and held_out_sigmas() are this at random and at fixed q."""
        _check_range(low, high)
        a, b = (self.cdf(torch.tensor(v, dtype=torch.float64)).item() for v in (low, high))  # CPU scalars: no sync
        u = a + (b - a) * _as64(q)
        sigma = shift_sigma(self._base_icdf(u), self.shift).clamp(low, high).float()
        return sigma.clamp(*_float32_bounds(low, high))

    def sample(self, n: int, *, generator: torch.Generator | None = None, low: float = 0.0, high: float = 1.0,
               device=None) -> torch.Tensor:
        """n sigmas, float32 [n], from the distribution truncated to [low, high] (not rescaled into it). Drawn on
        the generator's device (CPU without one) and moved to `device`; no host-device sync."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n={n!r} must be an int >= 0")
        draw_on = generator.device if generator is not None else device
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=draw_on)
        return self.quantile(u, low=low, high=high).to(device)


def _check_range(low: float, high: float) -> None:
    if not (_is_number(low) and _is_number(high) and 0.0 <= low < high <= 1.0):
        raise ValueError(f"sigma range [low={low!r}, high={high!r}] must satisfy 0 <= low < high <= 1")
