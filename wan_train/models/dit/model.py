"""The Wan diffusion transformer (official ``WanModel`` semantics, Wan2.1 and Wan2.2; wan_arch.md §1.3-1.8).

Legend: B batch, C channels, F/H/W latent frames/height/width, L video tokens (post-patch F*H*W), S context
tokens, D model width, P = prod(patch_size) * out_dim patch pixels per token.

    velocity = model(x, t, context, y=None, clip_fea=None, refs=None)

x [B, C, F, H, W] noisy latents; t [B] or per-token [B, L] on the 0-1000 scale; context [B, S <= 512, 4096]
umT5 embeddings, zero-padded here to 512 tokens and attended unmasked (the checkpoints were trained that
way); y [B, C_y, F, H, W] extra input channels (i2v: mask + image latent), concatenated after x; clip_fea
[B, 257, 1280] CLIP ViT-H/14 penultimate tokens (Wan2.1 i2v), or [B, 514, 1280] first + last (flf2v).

Reference-to-video (``config.references`` > 0): refs is a list of up to that many clean reference latents
[B, C, f_j, H, W] (a few frames of a clip, or one image: f_j = 1), reference j being the subject the prompt tags
@Video{j+1}. They are appended to x along the frame axis, so their RoPE time positions follow the video's (outside
its range), their tokens get timestep 0 (clean, as in training), and ``reference_embedding[j]`` (zero at init) is
added to reference j's tokens after the patch embedding. The output is the video's frames only: references have
no prediction, so no loss. An absent reference is a zero latent (the guidance branch without references).

Sequence parallelism (Ulysses): with ``dit.sequence_parallel`` set (``wan_train.parallel.SequenceParallel``; any
object with ``size``, ``split(x, *, dim)``, ``gather(x, *, dim)`` and ``attention(q, k, v)``), each rank of the
group runs the blocks and the head on its contiguous L/P tokens (with their RoPE rows and per-token timesteps),
self-attention goes through all-to-all over heads, and the head output is gathered, so every rank returns the
full output. Every rank must pass the same inputs. Parameter gradients are then partial per rank (each holds
its own tokens' contribution) and SUM over the group to the full gradient: a data-parallel mean over all ranks
must scale the loss by P. models never imports wan_train.parallel.

Memory (wan_train.memory, which models never imports either): with ``dit.block_offload`` set (an object with
``owns(index) -> bool``, ``run(index, block, x, e0, context, rope, attend=...)`` and a context manager
``hidden()`` under which ``.to(...)`` skips the offloaded tensors) the blocks it owns run through it, which
brings their weights onto the device for the call; with ``dit.activation_offload`` set (a
factory of a context manager of saved-tensor hooks) the training forward saves activations through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wan_train.models.dit.config import DiTConfig
from wan_train.models.dit.layers import (
    ATTENTION_BACKENDS, CrossAttention, FP32LayerNorm, Head, MLPProj, RMSNorm, SelfAttention, to_dtype_of,
)
from wan_train.models.dit.rope import Rope3D


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos(t w), sin(t w)] with w_k = 10000^(-k / (dim/2)), cos first, computed in float64 as the official model
    does (diffusers: ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``, in float32)."""
    half = dim // 2
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[..., None] * omega
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class WanBlock(nn.Module):
    """x += g1 * SelfAttn(LN1(x)(1 + sc1) + sh1); x += CrossAttn(LN3(x), ctx); x += g2 * FFN(LN2(x)(1 + sc2) + sh2)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm1 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.eps)
        self.norm3 = FP32LayerNorm(d, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.eps, text_len=cfg.text_len,
                                         image_branch=cfg.has_image_branch)
        self.norm2 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x_BLD: torch.Tensor, e0_BL6D: torch.Tensor, context_BSD: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], *, attend: Callable[..., torch.Tensor] | None = None,
                cross_mask: torch.Tensor | None = None) -> torch.Tensor:
        # e0_BL6D: [B, 1 or L, 6, D] float32 -> six [B, 1 or L, D] (shift, scale, gate) x (attention, FFN)
        sh1, sc1, g1, sh2, sc2, g2 = (self.modulation.float()[:, None] + e0_BL6D).unbind(2)
        x_BLD = x_BLD + self.self_attn(self.norm1(x_BLD) * (1 + sc1) + sh1, rope, attend=attend).float() * g1
        x_BLD = x_BLD + self.cross_attn(self.norm3(x_BLD), context_BSD, mask_B1LT=cross_mask).float()
        ffn_in = to_dtype_of(self.norm2(x_BLD) * (1 + sc2) + sh2, self.ffn[0])
        return x_BLD + self.ffn(ffn_in).float() * g2


@dataclass(frozen=True)
class ShotLayout:
    """Multi-shot inputs (``config.shots`` > 0): frame_shots [B, F] the shot (0..n-1) of each latent frame, in
    order; text_shots [B, S] which caption each context token belongs to: -1 the global caption (seen by every
    shot), i shot i's own. Context padded past S up to text_len counts as global, as the base attends its padding."""

    frame_shots: torch.Tensor
    text_shots: torch.Tensor


class WanDiT(nn.Module):
    def __init__(self, config: DiTConfig, *, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = cfg = config
        self.activation_checkpointing = activation_checkpointing
        # None, or the group that shares each sample's tokens (module docstring; wan_train.parallel.sequence)
        self.sequence_parallel = None
        self.block_offload = None  # (module docstring)
        self.activation_offload = None
        # how the checkpoint it was read from stored its weights (load_dit: "ComfyUI fp8 scaled (...)", "GGUF
        # (...)"); None: full precision or random init
        self.quantization: str | None = None
        # True (model.compile sets it): in training, block 0's input requires grad like every other block's, so one
        # compiled block graph serves all layers (with a frozen patch embedding, a LoRA run's would not, and dynamo
        # would compile block 0 apart); costs block 0's input gradient, one activation-sized tensor
        self.grad_into_blocks = False
        d = cfg.dim
        self.patch_embedding = self.make_patch_embedding()
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(d, math.prod(cfg.patch_size) * cfg.out_dim, cfg.eps)
        if cfg.has_image_branch:
            self.img_emb = MLPProj(cfg.image_dim, d, pos_len=cfg.image_pos_len)
        if cfg.references:  # zero: a base checkpoint behaves exactly as before until trained
            self.reference_embedding = nn.Parameter(torch.zeros(cfg.references, d))
        if cfg.shots:  # zero, likewise
            self.shot_embedding = nn.Parameter(torch.zeros(cfg.shots, d))
        self.rope = self.make_rope()
        self.init_weights()

    def make_patch_embedding(self) -> nn.Module:
        cfg = self.config
        return nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def make_rope(self):
        """The RoPE tables' owner: for_grid(grid, device) -> (cos, sin) [L, K/2]."""
        cfg = self.config
        return Rope3D(split=cfg.rope_split, theta=cfg.rope_theta, max_len=cfg.rope_max_len)

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, F, H, W] -> tokens [B, L, D] float32, in (f, h, w) row-major order."""
        return self.patch_embedding(to_dtype_of(x, self.patch_embedding)).flatten(2).transpose(1, 2).float()

    def init_weights(self) -> None:
        """Official initialisation for training from scratch (wan_arch.md §1.8); loading replaces all of it."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.init_patch_embedding()
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    def init_patch_embedding(self) -> None:
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))

    def grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        return tuple(n // p for n, p in zip(x.shape[2:], self.config.patch_size, strict=True))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, y: torch.Tensor | None = None,
                clip_fea: torch.Tensor | None = None, refs: Sequence[torch.Tensor] | None = None,
                shots: ShotLayout | None = None) -> torch.Tensor:
        if y is not None:
            x = torch.cat([x, y], dim=1)
        self._check_inputs(x, t, context, clip_fea)
        video_frames = x.shape[2]
        if shots is not None:
            self._check_shots(shots, x, context, refs)
        if refs:
            x, t = self._with_references(x, t, refs)
        grid = self.grid(x)

        x_BLD = self.embed_patches(x)
        if refs:
            x_BLD = self._mark_references(x_BLD, refs)
        token_shots = None
        if shots is not None:  # [B, L]: each token's shot, from its latent frame (frames come first in the order)
            token_shots = shots.frame_shots.repeat_interleave(grid[1] * grid[2], dim=1)
            x_BLD = x_BLD + self.shot_embedding.float()[token_shots]
        context_BSD = self.embed_text(context)
        if clip_fea is not None:
            context_BSD = torch.cat([self.img_emb(clip_fea).to(context_BSD.dtype), context_BSD], dim=1)
        rope = self.rope.for_grid(grid, x.device)
        sp = self.sequence_parallel
        if sp is not None:  # from here on L is this rank's L/P tokens
            x_BLD, t, rope = self._local_tokens(x_BLD, t=t, rope=rope, grid=grid)
            token_shots = None if token_shots is None else sp.split(token_shots, dim=1)
        e_BLD, e0_BL6D = self.time_embeddings(t)
        attend = None if sp is None else sp.attention  # None: each layer's own attention (set_attention)
        cross_mask = None if shots is None else self.shot_cross_mask(token_shots, shots.text_shots)

        training = torch.is_grad_enabled()
        if self.grad_into_blocks and training and not x_BLD.requires_grad:
            x_BLD = x_BLD.detach().requires_grad_()  # every block then sees an input that requires grad
        with self.activation_offload() if self.activation_offload is not None and training else nullcontext():
            for index, block in enumerate(self.blocks):
                if self.block_offload is not None and self.block_offload.owns(index):
                    x_BLD = self.block_offload.run(index, block, x_BLD, e0_BL6D, context_BSD, rope, attend=attend,
                                                   cross_mask=cross_mask)
                elif self.activation_checkpointing and training:
                    x_BLD = checkpoint(block, x_BLD, e0_BL6D, context_BSD, rope, attend=attend, cross_mask=cross_mask,
                                       use_reentrant=False)
                else:
                    x_BLD = block(x_BLD, e0_BL6D, context_BSD, rope, attend=attend, cross_mask=cross_mask)
            out_BLP = self.head(x_BLD, e_BLD).float()
        if sp is not None:
            out_BLP = sp.gather(out_BLP, dim=1)
        out = self.unpatchify(out_BLP, grid)
        # the reference frames' outputs are dropped; never a view (FSDP2 hooks the output for its backward)
        return out if out.shape[2] == video_frames else out[:, :, :video_frames].contiguous()

    def shot_cross_mask(self, token_shots_BL: torch.Tensor, text_shots_BS: torch.Tensor) -> torch.Tensor:
        """bool [B, 1, L, text_len]: a token of shot i sees the global caption (and the padding) and caption i."""
        text_BT = F.pad(text_shots_BS, (0, self.config.text_len - text_shots_BS.shape[1]), value=-1)
        return ((text_BT[:, None, :] == -1) | (text_BT[:, None, :] == token_shots_BL[:, :, None]))[:, None]

    def _check_shots(self, shots: ShotLayout, x: torch.Tensor, context: torch.Tensor,
                     refs: Sequence[torch.Tensor] | None) -> None:
        cfg, problems = self.config, []
        b, frames = x.shape[0], x.shape[2]
        if not cfg.shots:
            problems.append("shots were given but this model has no multi-shot extension (DiTConfig.shots=0)")
        elif refs:
            problems.append("shots and refs together are not supported yet")
        elif cfg.patch_size[0] != 1:
            problems.append(f"shots need a temporal patch of 1, not {cfg.patch_size[0]}")
        elif tuple(shots.frame_shots.shape) != (b, frames) or tuple(shots.text_shots.shape) != tuple(context.shape[:2]):
            problems.append(f"shots.frame_shots {tuple(shots.frame_shots.shape)} must be [{b}, {frames}] (latent "
                            f"frames) and shots.text_shots {tuple(shots.text_shots.shape)} [{b}, {context.shape[1]}] "
                            "(context tokens)")
        elif int(shots.frame_shots.min()) < 0 or int(shots.frame_shots.max()) >= cfg.shots:
            problems.append(f"shots.frame_shots must hold shot indices 0..{cfg.shots - 1}")
        elif bool((shots.frame_shots.diff(dim=1) < 0).any()):
            problems.append("shots.frame_shots must not decrease along the frames (each shot is one run of frames)")
        if problems:
            raise ValueError("WanDiT input: " + "; ".join(problems))

    def _with_references(self, x: torch.Tensor, t: torch.Tensor, refs: Sequence[torch.Tensor],
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """x with the references appended along frames, and per-token timesteps [B, L_video + L_refs] that are 0 on
        the reference tokens."""
        cfg = self.config
        if len(refs) > cfg.references:
            raise ValueError(f"WanDiT input: {len(refs)} references given; this model has "
                             + (f"{cfg.references} reference slots (@Video1..@Video{cfg.references})" if cfg.references
                                else "no reference extension (DiTConfig.references=0)"))
        b, c, _, h, w = x.shape
        for j, ref in enumerate(refs):
            if ref.ndim != 5 or (ref.shape[0], ref.shape[1], *ref.shape[3:]) != (b, c, h, w) \
                    or ref.shape[2] % cfg.patch_size[0]:
                raise ValueError(f"WanDiT input: refs[{j}] (@Video{j + 1}) has shape {tuple(ref.shape)}; expected "
                                 f"[{b}, {c}, f, {h}, {w}] like x, f a multiple of {cfg.patch_size[0]}")
        per_frame = (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
        video_tokens = x.shape[2] // cfg.patch_size[0] * per_frame
        ref_tokens = sum(r.shape[2] for r in refs) // cfg.patch_size[0] * per_frame
        t_BL = t[:, None].expand(b, video_tokens) if t.ndim == 1 else t
        t_BL = torch.cat([t_BL, t_BL.new_zeros(b, ref_tokens)], dim=1)
        return torch.cat([x, *(r.to(x.dtype) for r in refs)], dim=2), t_BL

    def _mark_references(self, x_BLD: torch.Tensor, refs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Add reference j's slot embedding to its tokens (the last tokens of x_BLD, in refs order)."""
        cfg = self.config
        per_frame = math.prod(refs[0].shape[-2:]) // (cfg.patch_size[1] * cfg.patch_size[2])
        counts = torch.tensor([r.shape[2] // cfg.patch_size[0] * per_frame for r in refs], device=x_BLD.device)
        slots = torch.repeat_interleave(torch.arange(len(refs), device=x_BLD.device), counts)
        video = x_BLD.shape[1] - slots.numel()
        return torch.cat([x_BLD[:, :video], x_BLD[:, video:] + self.reference_embedding.float()[slots]], dim=1)

    def _local_tokens(self, x_BLD: torch.Tensor, *, t: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                      grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """This rank's contiguous chunk of the tokens [B, L/P, D], of per-token timesteps t [B, L/P] (t [B] is
        shared) and of the RoPE tables [L/P, J] at the chunk's global positions."""
        sp = self.sequence_parallel
        num_tokens = math.prod(grid)
        if num_tokens % sp.size:
            raise ValueError(f"sequence parallel: the latent grid of {grid[0]} x {grid[1]} x {grid[2]} "
                             f"(frames x height x width) = {num_tokens} tokens is not divisible by P = {sp.size}")
        if t.ndim == 2:
            t = sp.split(t, dim=1)
        return sp.split(x_BLD, dim=1), t, tuple(sp.split(table_LJ, dim=0) for table_LJ in rope)

    def embed_text(self, context_BSD: torch.Tensor) -> torch.Tensor:
        """Text MLP over the prompt zero-padded to text_len (the padded positions are attended, unmasked)."""
        padded = F.pad(context_BSD, (0, 0, 0, self.config.text_len - context_BSD.shape[1]))
        return self.text_embedding(to_dtype_of(padded, self.text_embedding[0]))

    def time_embeddings(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] or [B, L] -> e [B, 1 or L, D] and e0 [B, 1 or L, 6, D], in float32 even under autocast."""
        t_BL = t[:, None] if t.ndim == 1 else t
        with torch.autocast(device_type=t.device.type, enabled=False):
            e_BLD = self.time_embedding(timestep_sinusoid(t_BL, self.config.freq_dim).float())
            e0_BL6D = self.time_projection(e_BLD).unflatten(-1, (6, -1))
        return e_BLD, e0_BL6D

    def unpatchify(self, x_BLP: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        # the head's output channel index is ((p_t * P_h + p_h) * P_w + p_w) * C + c: channels fastest
        pt, ph, pw = self.config.patch_size
        x = x_BLP.reshape(x_BLP.shape[0], *grid, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], x.shape[1], grid[0] * pt, grid[1] * ph, grid[2] * pw)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                      clip_fea: torch.Tensor | None) -> None:
        cfg = self.config
        problems = []
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            problems.append(f"x (with y concatenated) has shape {tuple(x.shape)}; expected [B, {cfg.in_dim}, F, H, W]")
        elif any(n % p for n, p in zip(x.shape[2:], cfg.patch_size, strict=True)):
            problems.append(f"latent (F, H, W) = {tuple(x.shape[2:])} is not divisible by patch_size {cfg.patch_size}")
        else:
            num_tokens = math.prod(self.grid(x))
            if not (t.shape == (x.shape[0],) or t.shape == (x.shape[0], num_tokens)):
                problems.append(f"t has shape {tuple(t.shape)}; "
                                f"expected [{x.shape[0]}] or [{x.shape[0]}, {num_tokens}]")
        if context.ndim != 3 or context.shape[2] != cfg.text_dim or context.shape[1] > cfg.text_len:
            problems.append(f"context has shape {tuple(context.shape)}; "
                            f"expected [B, S <= {cfg.text_len}, {cfg.text_dim}]")
        if cfg.has_image_branch and clip_fea is None:
            problems.append(f"this {cfg.model_type} model has a CLIP image branch: "
                            f"pass clip_fea [B, 257, {cfg.image_dim}]")
        if not cfg.has_image_branch and clip_fea is not None:
            problems.append("clip_fea was given but this model has no CLIP image branch")
        if problems:
            raise ValueError("WanDiT input: " + "; ".join(problems))

    def set_attention(self, backend: str) -> WanDiT:
        """The attention kernel of every layer (layers.ATTENTION_BACKENDS: sdpa | flash | cudnn | flex)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {backend!r}: expected one of {list(ATTENTION_BACKENDS)}")
        for module in self.modules():
            if isinstance(module, (SelfAttention, CrossAttention)):
                module.backend = backend
        return self

    def fp32_parameter_names(self) -> set[str]:
        """Parameters that stay float32 when the model is cast to a narrower dtype, because the official model
        computes with them in float32: time embedding and projection, modulation tables, norm weights (and the
        reference slot embeddings, added to the float32 residual stream)."""
        names = {n for n, _ in self.named_parameters()
                 if n.endswith(("modulation", "reference_embedding", "shot_embedding"))}
        for module_name, module in self.named_modules():
            if isinstance(module, (RMSNorm, FP32LayerNorm)) or module_name in ("time_embedding", "time_projection"):
                names |= {f"{module_name}.{n}" for n, _ in module.named_parameters()}
        return names

    def to_dtype(self, dtype: torch.dtype) -> WanDiT:
        """Cast floating parameters to ``dtype``, keeping ``fp32_parameter_names()`` in float32."""
        return cast_keeping_fp32(self, dtype)

    def extend_shots(self, count: int) -> WanDiT:
        """Add the multi-shot extension in place: ``count`` shot embeddings, zero (the base's output until trained;
        the cross-attention mask only matters once captions are split into shots)."""
        return self._extend("shots", "shot_embedding", count)

    def extend_references(self, count: int) -> WanDiT:
        """Add the reference-to-video extension to a plain DiT in place: ``count`` slot embeddings, zero, so the
        model computes exactly what it did until they train."""
        return self._extend("references", "reference_embedding", count)

    def _extend(self, field: str, name: str, count: int) -> WanDiT:
        """A zero [count, dim] embedding `name`, counted in config `field`; a DiT that has it must have `count`."""
        if getattr(self.config, field):
            if getattr(self.config, field) != count:
                raise ValueError(f"this DiT has {getattr(self.config, field)} {name} rows; {count} were asked for")
            return self
        self.config = self.config.replace(**{field: count})
        anchor = next(self.parameters())
        setattr(self, name, nn.Parameter(torch.zeros(count, self.config.dim, device=anchor.device)))
        return self

    def _apply(self, fn, recurse=True):
        # a whole-model .to(device) leaves offloaded blocks' weights in host memory (block_offload.hidden)
        if self.block_offload is None:
            return super()._apply(fn, recurse)
        with self.block_offload.hidden():
            return super()._apply(fn, recurse)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def cast_keeping_fp32(model, dtype: torch.dtype):
    """Cast `model`'s parameters to `dtype`, keeping its fp32_parameter_names() in float32 when `dtype` is narrower."""
    keep = model.fp32_parameter_names() if dtype.itemsize < 4 else set()
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if name in keep else dtype)
    return model
