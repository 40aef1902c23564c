"""Building blocks of the Wan DiT, with the official parameter names (wan_arch.md §1.4, §1.6, §1.9).

Legend: B batch, L video tokens, S context tokens, D model width, N heads, K head dim, J = K/2.

Precision: norms, modulation and the residual stream run in float32 (as the official model does under its
fp32 autocast regions); inputs to a Linear are cast to that Linear's weight dtype, so the same code serves
fp32 weights, bf16 weights, and fp32 weights under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import flex_attention

from wan_train.models.dit.rope import apply_rope


def to_dtype_of(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """x in the dtype ``layer`` computes in: its weight's, or, for weights stored narrower than they compute (the
    float8 base of wan_train.models.dit.fp8), the layer's ``compute_dtype``. peft's LoRA wrapper answers for its
    base."""
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    return x.to(base.compute_dtype if hasattr(base, "compute_dtype") else base.weight.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in float32 (q/k norms span all heads: "rms_norm_across_heads")."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps)


class FP32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


# model.attention: "sdpa" lets torch pick SDPA's kernel (flash / cuDNN / memory-efficient on a GPU when unmasked);
# "flash" and "cudnn" pin SDPA to that CUDA kernel; "flex" is FlexAttention (torch.nn.attention.flex_attention: fused
# under torch.compile; unfused, and slow, in eager mode; forward only on the CPU). A masked call (multi-shot
# cross-attention) always takes SDPA's default choice: the pinned kernels and flex here are for unmasked attention.
ATTENTION_BACKENDS = ("sdpa", "flash", "cudnn", "flex")
_SDPA_KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def attention(q_BLNK: torch.Tensor, k_BSNK: torch.Tensor, v_BSNK: torch.Tensor,
              mask_B1LS: torch.Tensor | None = None, *, backend: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(K)) v through the `backend` kernel (ATTENTION_BACKENDS); mask: bool, True where a query
    may attend; returns [B, L, N*K]."""
    q, k, v = q_BLNK.transpose(1, 2), k_BSNK.transpose(1, 2), v_BSNK.transpose(1, 2)
    if mask_B1LS is not None or backend == "sdpa":
        out_BNLK = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_B1LS)
    elif backend == "flex":
        out_BNLK = flex_attention(q, k, v)
    else:
        with sdpa_kernel(_SDPA_KERNELS[backend]):
            out_BNLK = F.scaled_dot_product_attention(q, k, v)
    return out_BNLK.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.backend = "sdpa"  # ATTENTION_BACKENDS (WanDiT.set_attention)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x_BLD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], *,
                attend: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        # attend(q, k, v) -> [B, L, N*K]; sequence parallel passes Ulysses attention over the rank's L/P tokens;
        # None: attention() with this layer's backend
        x_BLD = to_dtype_of(x_BLD, self.q)
        dtype = x_BLD.dtype
        q_BLNK = apply_rope(self.norm_q(self.q(x_BLD)).unflatten(-1, (self.num_heads, -1)), *rope).to(dtype)
        k_BLNK = apply_rope(self.norm_k(self.k(x_BLD)).unflatten(-1, (self.num_heads, -1)), *rope).to(dtype)
        v_BLNK = self.v(x_BLD).unflatten(-1, (self.num_heads, -1))
        if attend is None:
            return self.o(attention(q_BLNK, k_BLNK, v_BLNK, backend=self.backend))
        return self.o(attend(q_BLNK, k_BLNK, v_BLNK))


class CrossAttention(nn.Module):
    """Video queries attend to the text tokens; with an image branch (Wan2.1 i2v / flf2v) the same queries also
    attend, separately, to the CLIP tokens that precede the text, and the two results are summed before ``o``."""

    def __init__(self, dim: int, num_heads: int, eps: float, *, text_len: int, image_branch: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.backend = "sdpa"  # ATTENTION_BACKENDS (WanDiT.set_attention)
        self.text_len = text_len
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        if image_branch:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def _heads(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return x.to(dtype).unflatten(-1, (self.num_heads, -1))

    def forward(self, x_BLD: torch.Tensor, context_BSD: torch.Tensor, *,
                mask_B1LT: torch.Tensor | None = None) -> torch.Tensor:
        # mask (multi-shot): which text tokens each video token sees, bool [B, 1, L, text_len]
        x_BLD = to_dtype_of(x_BLD, self.q)
        context_BSD = to_dtype_of(context_BSD, self.k)
        dtype = x_BLD.dtype
        image_BID, text_BTD = context_BSD[:, : -self.text_len], context_BSD[:, -self.text_len :]
        q_BLNK = self._heads(self.norm_q(self.q(x_BLD)), dtype)
        k_BTNK = self._heads(self.norm_k(self.k(text_BTD)), dtype)
        out_BLD = attention(q_BLNK, k_BTNK, self._heads(self.v(text_BTD), dtype), mask_B1LT, backend=self.backend)
        if hasattr(self, "k_img"):
            k_BINK = self._heads(self.norm_k_img(self.k_img(image_BID)), dtype)
            out_BLD = out_BLD + attention(q_BLNK, k_BINK, self._heads(self.v_img(image_BID), dtype),
                                          backend=self.backend)
        return self.o(out_BLD)


class MLPProj(nn.Module):
    """CLIP image tokens [B, 257 (flf2v: 514), 1280] -> context tokens [B, I, D] (official ``img_emb``)."""

    def __init__(self, image_dim: int, dim: int, *, pos_len: int | None) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            FP32LayerNorm(image_dim), nn.Linear(image_dim, image_dim), nn.GELU(), nn.Linear(image_dim, dim),
            FP32LayerNorm(dim),
        )
        if pos_len is not None:
            self.emb_pos = nn.Parameter(torch.zeros(1, pos_len, image_dim))

    def forward(self, clip_fea_BID: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "emb_pos"):
            clip_fea_BID = clip_fea_BID.float() + self.emb_pos.float()
        x = self.proj[0](clip_fea_BID)
        x = self.proj[2](self.proj[1](to_dtype_of(x, self.proj[1])))
        return self.proj[4](self.proj[3](to_dtype_of(x, self.proj[3])))


class Head(nn.Module):
    """Final adaLN (shift, scale from the time embedding ``e``, not ``e0``) and the linear to patch pixels."""

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x_BLD: torch.Tensor, e_BLD: torch.Tensor) -> torch.Tensor:
        # e_BLD: [B, 1 or L, D] float32; modulation [1, 2, D] -> shift, scale [B, 1 or L, D]
        shift, scale = (self.modulation.float()[:, None] + e_BLD[:, :, None]).unbind(2)
        return self.head(to_dtype_of(self.norm(x_BLD) * (1 + scale) + shift, self.head))
