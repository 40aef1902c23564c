"""Ovi's twin-tower audio-video DiT (ovi_facts.md §1-4): a Wan2.2-TI2V-5B video tower and an audio tower of the
same width and depth, joined in every block by cross-modal attention.

Legend: B batch, Lv video tokens, La audio latents, S context tokens, D width (equal in both towers), N heads,
K head dim.

    v_video [B, 48, F, H, W], v_audio [B, 20, La] = OviDiT(config)(video, audio, t_video, t_audio, context)

Fusion (the official ``FusionModel``; parameters live inside each tower's block ``i`` cross-attention, under the
official names ``k_fusion``, ``v_fusion``, ``pre_attn_norm_fusion`` (affine LayerNorm) and ``norm_k_fusion``
(RMSNorm over all heads)). Block i of the twin model runs, in this order:
  1. audio self-attention (+ gate), 2. video self-attention (+ gate), both as in a Wan block;
  3. audio cross-attention: q = norm_q(q(norm3(a))) attends to the text (no RoPE) and, separately, with RoPE on
     both sides, to keys norm_k_fusion(k_fusion(LN_f(v))) and values v_fusion(LN_f(v)) of the video tokens after
     step 2; the two results are summed before the shared output projection ``o``; then the audio FFN;
  4. video cross-attention: the same with the roles swapped, over the audio tokens as they were after step 1
     (before step 3), then the video FFN.
So each modality reads the other's post-self-attention state of the same block. The audio queries carry the 1-D
scaled RoPE (models/dit/audio.py), the video keys the 3-D RoPE: on the frame-axis channels their phases line up
in time; on the height/width channels the audio side is unrotated.

Timesteps: one per modality (t_video, t_audio: [B] or per token); the official engine passes the same t to both
towers, with t = 0 on the first latent frame's tokens for image-to-video. Text: each tower embeds its own context
(the official conditional pass gives both the same umT5 prompt; the unconditional pass gives each its own
negative prompt). ``skip_blocks`` drops those fusion blocks in both towers (Ovi's skip-layer guidance, ``slg_layer``,
on the unconditional pass).

Reference voices (``config.audio.references`` > 0, extend_audio_references; not in Ovi): ``audio_refs`` is a list
of up to that many clean audio latents [B, Za, L_j], reference j being the voice (or sound) of the subject the
prompt tags @Video{j+1}. Each is embedded on its own (the audio patch embedding's convolutions never straddle two
segments) and appended after the clip's audio tokens, RoPE positions continuing; its tokens get timestep 0 and
``audio_model.reference_embedding[j]`` (zero at init); the video tower reads them through fusion like the rest of
the sound. The output is the clip's audio only: references have no prediction, so no loss. An absent reference
is a zero latent (the guidance branch without it).

Not supported here: sequence parallelism, block offload, and the video tower's reference / shot extensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from wan_train.models.dit.audio import AudioDiT
from wan_train.models.dit.config import DiTConfig
from wan_train.models.dit.layers import FP32LayerNorm, RMSNorm, attention, to_dtype_of
from wan_train.models.dit.model import WanBlock, WanDiT, cast_keeping_fp32
from wan_train.models.dit.rope import apply_rope

FUSION_EPS = 1e-6  # Ovi builds the fusion norms with their own eps (LayerNorm's and RMSNorm's 1e-6)
# Ovi's init divides the video tower's fusion projections by this (FusionModel.init_weights)
VIDEO_FUSION_INIT_DIVISOR = 10.0
Rope = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class OviConfig:
    video: DiTConfig
    audio: DiTConfig

    def __post_init__(self) -> None:
        problems = []
        if self.video.is_audio or self.video.has_image_branch or self.video.references or self.video.shots:
            problems.append(f"the video tower must be a plain T2V / TI2V Wan DiT (got model_type "
                            f"{self.video.model_type!r}, references {self.video.references}, shots {self.video.shots})")
        if not self.audio.is_audio:
            problems.append(f"the audio tower must have model_type 't2a', not {self.audio.model_type!r}")
        for name in ("dim", "num_heads", "num_layers", "text_dim", "text_len"):
            if getattr(self.video, name) != getattr(self.audio, name):
                problems.append(f"the towers differ in {name} ({getattr(self.video, name)} video, "
                                f"{getattr(self.audio, name)} audio); fusion needs them equal")
        if problems:
            raise ValueError("invalid OviConfig: " + "; ".join(problems))


def add_fusion(block: WanBlock) -> None:
    """The four fusion modules of one block, inside its cross-attention (where Ovi's checkpoint has them)."""
    attn, d = block.cross_attn, block.norm1.normalized_shape[0]
    attn.k_fusion = nn.Linear(d, d)
    attn.v_fusion = nn.Linear(d, d)
    attn.pre_attn_norm_fusion = FP32LayerNorm(d, FUSION_EPS, elementwise_affine=True)
    attn.norm_k_fusion = RMSNorm(d, FUSION_EPS)


def fused_cross_attention(attn: nn.Module, x_BLD: torch.Tensor, context_BSD: torch.Tensor, rope: Rope,
                          other_BMD: torch.Tensor, other_rope: Rope) -> torch.Tensor:
    """o(TextAttn(q, context) + FusionAttn(RoPE(q), RoPE'(keys of other), values of other)); x is norm3's output."""
    x_BLD = to_dtype_of(x_BLD, attn.q)
    context_BSD = to_dtype_of(context_BSD, attn.k)
    dtype = x_BLD.dtype

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).unflatten(-1, (attn.num_heads, -1))

    q_BLNK = heads(attn.norm_q(attn.q(x_BLD)))
    out_BLD = attention(q_BLNK, heads(attn.norm_k(attn.k(context_BSD))), heads(attn.v(context_BSD)))
    other_BMD = to_dtype_of(attn.pre_attn_norm_fusion(other_BMD), attn.k_fusion)
    k_BMNK = apply_rope(heads(attn.norm_k_fusion(attn.k_fusion(other_BMD))), *other_rope).to(dtype)
    v_BMNK = heads(attn.v_fusion(other_BMD))
    out_BLD = out_BLD + attention(apply_rope(q_BLNK, *rope).to(dtype), k_BMNK, v_BMNK)
    return attn.o(out_BLD)


def _modulation(block: WanBlock, e0_BL6D: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (block.modulation.float()[:, None] + e0_BL6D).unbind(2)


def _self_attention(block: WanBlock, x_BLD: torch.Tensor, mod: tuple[torch.Tensor, ...], rope: Rope) -> torch.Tensor:
    sh1, sc1, g1 = mod[:3]
    return x_BLD + block.self_attn(block.norm1(x_BLD) * (1 + sc1) + sh1, rope).float() * g1


def _cross_and_ffn(block: WanBlock, x_BLD: torch.Tensor, mod: tuple[torch.Tensor, ...], context_BSD: torch.Tensor,
                   rope: Rope, other_BMD: torch.Tensor, other_rope: Rope) -> torch.Tensor:
    sh2, sc2, g2 = mod[3:]
    x_BLD = x_BLD + fused_cross_attention(block.cross_attn, block.norm3(x_BLD), context_BSD, rope, other_BMD,
                                          other_rope).float()
    ffn_in = to_dtype_of(block.norm2(x_BLD) * (1 + sc2) + sh2, block.ffn[0])
    return x_BLD + block.ffn(ffn_in).float() * g2


def fusion_block(video_block: WanBlock, audio_block: WanBlock, v_BLD: torch.Tensor, a_BMD: torch.Tensor,
                 e0_video: torch.Tensor, e0_audio: torch.Tensor, context_video: torch.Tensor,
                 context_audio: torch.Tensor, rope_video: Rope, rope_audio: Rope) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of the twin model, in the official order (module docstring)."""
    mod_a, mod_v = _modulation(audio_block, e0_audio), _modulation(video_block, e0_video)
    a_BMD = _self_attention(audio_block, a_BMD, mod_a, rope_audio)
    v_BLD = _self_attention(video_block, v_BLD, mod_v, rope_video)
    a_after_self = a_BMD
    a_BMD = _cross_and_ffn(audio_block, a_BMD, mod_a, context_audio, rope_audio, v_BLD, rope_video)
    v_BLD = _cross_and_ffn(video_block, v_BLD, mod_v, context_video, rope_video, a_after_self, rope_audio)
    return v_BLD, a_BMD


class OviDiT(nn.Module):
    """The twin-tower model; ``video_model`` and ``audio_model`` are the official submodule names."""

    def __init__(self, config: OviConfig, *, activation_checkpointing: bool = False,
                 video_model: WanDiT | None = None) -> None:
        """video_model: an existing Wan DiT to become the video tower (it is taken, not copied: the fusion modules
        are added to its blocks in place); see with_audio_tower."""
        super().__init__()
        self.ovi_config = config
        self.activation_checkpointing = activation_checkpointing
        self.sequence_parallel = None  # not supported (module docstring); the training loops ask for it
        self.quantization: str | None = None  # a float8 file it was read from (load_ovi_dit), as WanDiT's
        if video_model is not None and video_model.config != config.video:
            raise ValueError(f"video_model's config {video_model.config} is not config.video {config.video}")
        self.video_model = WanDiT(config.video) if video_model is None else video_model
        self.audio_model = AudioDiT(config.audio)
        for tower in (self.video_model, self.audio_model):
            for block in tower.blocks:
                add_fusion(block)
        anchor = next(self.video_model.parameters())
        self.to(device=anchor.device)  # a given tower stays where it is; the new modules join it
        self.init_fusion()

    @classmethod
    def with_audio_tower(cls, video_model: WanDiT, audio: DiTConfig) -> OviDiT:
        """A Wan T2V / TI2V DiT given a voice: it becomes the video tower of a twin model whose new audio tower
        (``audio``: its widths must be the video tower's) reads the video through fusion from the start, while the
        video tower's fusion values are zero, so its output is exactly the base's until they train."""
        model = cls(OviConfig(video=video_model.config, audio=audio), video_model=video_model)
        with torch.no_grad():
            for block in model.video_model.blocks:
                block.cross_attn.v_fusion.weight.zero_()
                block.cross_attn.v_fusion.bias.zero_()
        return model

    @property
    def config(self) -> DiTConfig:
        """The video tower's config: what the loop's video side (tasks, strides, latent shape) asks about."""
        return self.video_model.config

    def init_fusion(self) -> None:
        """Official initialisation of the fusion modules (Wan's: xavier weights, zero biases, unit norms), the
        video tower's projections scaled down by 10."""
        for tower, divisor in ((self.video_model, VIDEO_FUSION_INIT_DIVISOR), (self.audio_model, 1.0)):
            for block in tower.blocks:
                for linear in (block.cross_attn.k_fusion, block.cross_attn.v_fusion):
                    nn.init.xavier_uniform_(linear.weight)
                    nn.init.zeros_(linear.bias)
                    with torch.no_grad():
                        linear.weight.div_(divisor)

    def extend_audio_references(self, count: int) -> OviDiT:
        """Add ``count`` reference-voice slots to the audio tower in place (zero embeddings: the model is unchanged
        until they train); see the module docstring."""
        self.audio_model.extend_references(count)
        self.ovi_config = OviConfig(video=self.ovi_config.video, audio=self.audio_model.config)
        return self

    def forward(self, video: torch.Tensor, audio: torch.Tensor, t_video: torch.Tensor, t_audio: torch.Tensor,
                context: torch.Tensor, *, audio_context: torch.Tensor | None = None,
                skip_blocks: Sequence[int] = (),
                audio_refs: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, Zv, F, H, W], audio [B, Za, La]; t_* [B] or per token (0-1000); context [B, S, text_dim] for
        the video tower and, unless audio_context is given, the audio tower too; audio_refs: clean reference
        voices [B, Za, L_j] (module docstring). Returns both velocities (the audio's for the La clip latents)."""
        vm, am = self.video_model, self.audio_model
        vm._check_inputs(video, t_video, context, None)
        am._check_inputs(audio, t_audio, context if audio_context is None else audio_context, None)
        if video.shape[0] != audio.shape[0]:
            raise ValueError(f"OviDiT input: video batch {video.shape[0]} != audio batch {audio.shape[0]}")
        grid_v, a_BMD = vm.grid(video), am.embed_patches(audio)
        clip_latents = audio.shape[2]
        if audio_refs:
            a_BMD, t_audio = self._with_audio_references(a_BMD, t_audio, audio, audio_refs)
        grid_a = (a_BMD.shape[1],)
        v_BLD = vm.embed_patches(video)
        ctx_v = vm.embed_text(context)
        ctx_a = am.embed_text(context if audio_context is None else audio_context)
        rope_v, rope_a = vm.rope.for_grid(grid_v, video.device), am.rope.for_grid(grid_a, audio.device)
        e_v, e0_v = vm.time_embeddings(t_video)
        e_a, e0_a = am.time_embeddings(t_audio)
        training = torch.is_grad_enabled()
        for index, (video_block, audio_block) in enumerate(zip(vm.blocks, am.blocks, strict=True)):
            if index in skip_blocks:
                continue
            args = (video_block, audio_block, v_BLD, a_BMD, e0_v, e0_a, ctx_v, ctx_a, rope_v, rope_a)
            if self.activation_checkpointing and training:
                v_BLD, a_BMD = checkpoint(fusion_block, *args, use_reentrant=False)
            else:
                v_BLD, a_BMD = fusion_block(*args)
        out_v = vm.unpatchify(vm.head(v_BLD, e_v).float(), grid_v)
        out_a = am.unpatchify(am.head(a_BMD, e_a).float(), grid_a)
        if out_a.shape[2] != clip_latents:  # the references' outputs are dropped (never a view: FSDP2 hooks it)
            out_a = out_a[:, :, :clip_latents].contiguous()
        return out_v, out_a

    def _with_audio_references(self, a_BMD: torch.Tensor, t_audio: torch.Tensor, audio: torch.Tensor,
                               refs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The clip's audio tokens followed by each reference's (embedded on its own, plus its slot embedding),
        and per-token timesteps that are 0 on the references."""
        am = self.audio_model
        slots = am.config.references
        if len(refs) > slots:
            raise ValueError(f"OviDiT input: {len(refs)} audio references given; this model has "
                             + (f"{slots} reference-voice slots" if slots else
                                "no reference-voice slots (extend_audio_references)"))
        b, z = audio.shape[:2]
        for j, ref in enumerate(refs):
            if ref.ndim != 3 or tuple(ref.shape[:2]) != (b, z) or ref.shape[2] < 1:
                raise ValueError(f"OviDiT input: audio_refs[{j}] (@Video{j + 1}) has shape {tuple(ref.shape)}; "
                                 f"expected [{b}, {z}, L] like the audio")
        marks = am.reference_embedding.float()
        tokens = [a_BMD] + [am.embed_patches(ref) + marks[j] for j, ref in enumerate(refs)]
        t_BL = t_audio[:, None].expand(b, audio.shape[2]) if t_audio.ndim == 1 else t_audio
        t_BL = torch.cat([t_BL, t_BL.new_zeros(b, sum(r.shape[2] for r in refs))], dim=1)
        return torch.cat(tokens, dim=1), t_BL

    def fp32_parameter_names(self) -> set[str]:
        """The towers' float32 parameters (WanDiT.fp32_parameter_names) and the fusion norms."""
        names = {f"video_model.{n}" for n in self.video_model.fp32_parameter_names()}
        names |= {f"audio_model.{n}" for n in self.audio_model.fp32_parameter_names()}
        return names

    def to_dtype(self, dtype: torch.dtype) -> OviDiT:
        return cast_keeping_fp32(self, dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
