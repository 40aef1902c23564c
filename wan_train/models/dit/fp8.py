"""Frozen weights stored in float8 (e4m3) with a float32 scale and computed in a wider dtype (bf16 on a GPU): the
14B DiT's block linears at 1 byte per weight instead of 2, for LoRA on a frozen base.

Quantisation, per tensor or per output channel (row): s = amax|W| / 448 (e4m3's largest finite value),
Q = round_e4m3(W / s), W ~ s Q. e4m3 keeps 3 mantissa bits, so for |W / s| >= 2^-6 (normal range) the error is at
most half an ulp, |W - s Q| <= 2^-4 |W|; below it (subnormals, spacing 2^-9) at most s 2^-10. Hence
|W - s Q| <= max(2^-4 |W|, 2^-10 s) everywhere (`error_bound`). Per-channel scales keep a row of small weights
from falling into the subnormal range because another row has large ones.

The matmul y = x (s Q)^T + b dequantises Q into the compute dtype inside a custom autograd function, which saves
the float8 Q (not a dequantised copy) for backward and dequantises again there: grad_x = grad_y (s Q). So a
frozen base costs 1 byte per weight for the whole step, and at most one layer's dequantised weight is alive at a
time. (Weight-only: the matmul itself runs in the compute dtype, as "computed in bf16" asks; float8 tensor-core
matmuls would change the numerics of the activations too.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
GRANULARITIES = ("tensor", "channel")


def quantize(weight: torch.Tensor, *, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (Q float8_e4m3fn [out, in], s float32: [] per tensor or [out, 1] per channel), W ~ s Q."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"fp8 granularity={granularity!r} is not one of {GRANULARITIES}")
    w = weight.detach().float()
    amax = w.abs().amax() if granularity == "tensor" else w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # an all-zero row keeps Q = 0
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """s Q in `dtype` (the product is formed in float32, then rounded once)."""
    return (q.float() * scale).to(dtype)


def error_bound(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |W - s Q| (module docstring)."""
    return torch.maximum(weight.abs().float() * 2.0**-4, scale * 2.0**-10)


class _Fp8Matmul(torch.autograd.Function):
    """x [..., in] @ (s Q)^T with Q saved as float8; no gradient for Q or s (frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, scale)
        return F.linear(x, dequantize(q, scale, x.dtype))

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        q, scale = ctx.saved_tensors
        return grad_y @ dequantize(q, scale, grad_y.dtype), None, None


class Fp8Linear(nn.Module):
    """A frozen linear layer stored as float8_e4m3fn (``weight``) + float32 ``weight_scale``, computing in
    ``compute_dtype`` (inputs are cast to it: wan_train.models.dit.layers.to_dtype_of asks for it). The bias is
    kept in the compute dtype. Nothing here trains; LoRA adds its trained factors beside it (peft wraps it as its
    base layer)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, *,
                 compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(q, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, granularity: str = "channel",
                    compute_dtype: torch.dtype = torch.bfloat16) -> Fp8Linear:
        q, scale = quantize(linear.weight, granularity=granularity)
        return cls(q, scale, linear.bias, compute_dtype=compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        y = _Fp8Matmul.apply(x, self.weight, self.weight_scale)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale, self.compute_dtype)

    def extra_repr(self) -> str:
        scales = "per tensor" if self.weight_scale.ndim == 0 else "per channel"
        return (f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3fn {scales}, "
                f"compute_dtype={self.compute_dtype}")
