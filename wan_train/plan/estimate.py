"""Peak device memory and step time of one DiT training step (bf16-mixed), as arithmetic over the model's shapes.

Legend: B batch, T video tokens (post-patch F*H*W, plus the reference tokens of R2V: references are appended along
the frames, each reference's frames compressed by the VAE on their own), S text tokens (text_len, 512: the padding
is attended), I CLIP image tokens (image-branch models), D width, F FFN width, N heads, K head dim, r LoRA rank,
L blocks.

Memory (bytes; ``Estimate.parts`` names each term, ``peak`` is their sum in the heavier phase of the step):
  weights              frozen base as ``wan_train.memory.place_base`` stores it, counted on a meta-device DiT
                       (bf16 2 B, float8 block linears 1 B + a float32 scale per output row, or per weight for a
                       float8 file kept as stored (Workload.fp8_granularity), fp32_parameter_names
                       4 B); block offload keeps the last K blocks in host memory, but at most 1 + prefetch of them
                       are on the device at once, so the device holds (K - (1 + prefetch))+ blocks fewer.
  trainable+optimizer  16 B per trained parameter: float32 weight 4 + grad 4 + AdamW exp_avg and exp_avg_sq 8
                       (perf.md §6). Lightning zeroes the gradients after the forward, so the previous step's are
                       alive during it.
  autocast copies      full fine-tune only: bf16-mixed keeps float32 weights and autocast caches one bf16 copy of
                       every weight a matmul uses until the forward ends (2 B per linear weight); in the backward
                       only the copies saved by un-checkpointed blocks (and the live block) remain.
  block activations    un-checkpointed blocks: what each block saves for backward, ``block_activations`` below
                       (derived op by op from layers.py / model.py and checked against a measurement of the real
                       block's saved tensors in tests/unit/test_plan.py).
  checkpointed inputs  checkpointed blocks (all with model.activation_checkpointing, and every offloaded block)
                       keep only their input, the float32 residual stream 4 B T D; with activation offload these
                       wait in host memory and one block input is on the device at a time.
  live block           the block being backpropagated: its recomputed saved tensors, plus a backward working set
                       (an estimate, not measured): the incoming and the accumulating float32 residual gradient
                       (2 x 4 B T D) and the largest transient, the FFN's (grad of the GELU output and input,
                       2 x 2 B T F, +2 B T F when ffn.2 has a LoRA: peft's float32 input copy gets a float32 grad)
                       or self-attention's (dO, dq, dk, dv in bf16 and flash's float32 dq accumulator, 12 B T D);
                       plus one dequantised (float8) or autocast-cast (float32 base) weight, 2 B x the widest linear.
  embeddings+head+loss the head's input (the last residual, 4 B T D), the text context (bf16 [B, S + I, D] and the
                       float32 encoder output [B, S, 4096]), time embeddings, the RoPE tables (float32 [T, K]) and
                       the loss tensors (latents, noise, x_t, target, prediction and its unpatchified copy, the
                       difference and its gradient: 8 float32 [B, C, F, H, W]).
Not counted: the encoders (memory.encoders=swap or cached latents keep them off the device during steps), the
CUDA context and allocator slack (wan_train.plan.choose.fits keeps a margin for them), LoRA dropout masks.

Speed (for ranking settings only; every figure is "estimated"):
  compute    = (3 x forward FLOPs (wan_train.models.dit_flops, the MFU convention; LoRA's frozen base skips the
               weight gradients, so this overstates LoRA compute a little) + 1 x forward of each checkpointed block
               (recompute)) / (bf16 dense peak x MFU_ASSUMED)
  block offload: each offloaded block's frozen bytes cross the host link in the forward and again in the backward
               (the last block stays resident: once), at HOST_LINK_EFFICIENCY x the PCIe rate, on a side stream
               that overlaps the neighbouring block's compute (forward: one block forward; backward: recompute +
               backward = 3 block forwards). Exposed = sum max(0, transfer - overlapped compute); the first
               offloaded block's forward copy is not prefetched, so it is exposed whole.
  activation offload: every saved tensor moves out and back over the host link on the compute stream (not
               overlapped): block inputs, plus per block the text context and RoPE tables unpacked again.
  float8 base: each use of a block linear dequantises it (read 1 B + write 2 B per weight) at HBM bandwidth:
               forward, backward, and the recompute of checkpointed blocks. A float32 frozen base pays the same
               for autocast's casts (read 4 B + write 2 B).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch

from wan_train.lora import TARGET_PRESETS, add_adapter
from wan_train.lora.targets import target_pattern
from wan_train.memory import BASE_DTYPES, Placement, place_base
from wan_train.models import VAE_CONFIGS, DiTConfig, ModelSize, WanDiT, builtin_vae, dit_flops, get_size
from wan_train.models.dit.config import MAX_REFERENCES
from wan_train.models.dit.flops import CLIP_TOKENS

MFU_ASSUMED = 0.4  # achieved fraction of the bf16 dense peak in a Wan step (perf.md §1: 35-50% on an H100)
HOST_LINK_EFFICIENCY = 0.8  # pinned-memory copies reach about 80% of the PCIe link rate
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward, the MFU convention (perf.md §8)
TRAINED_BYTES_PER_PARAM = 16  # float32 weight + grad + AdamW's two moments (perf.md §6)
LOSS_TENSORS = 8  # float32 latent-shaped tensors alive around the loss (module docstring)
FP8_DEQUANT_BYTES = 3  # per weight and use: read float8 (1 B), write the bf16 copy (2 B)
FP32_CAST_BYTES = 6  # per weight and use: read float32 (4 B), write the bf16 copy (2 B)


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One training step's shape: a model size, the clip (pixels), the batch, and LoRA (rank None: full fine-tune)."""

    size: str  # a name of wan_train.models.SIZES
    width: int  # pixels
    height: int
    frames: int  # pixel frames, 1 + 4k
    batch_size: int = 1
    lora_rank: int | None
    lora_target: str = "attn_qkvo_ffn"  # a preset of wan_train.lora.TARGET_PRESETS
    references: int = 0  # R2V: references per sample (each a clean latent appended along frames, timestep 0)
    reference_frames: int = 1  # pixel frames of each reference, 1 + 4k
    # a float8 base's scales: the memory group's memory.fp8_granularity where wan_train quantizes, or a float8
    # file's own where it is kept as stored ("tensor": ComfyUI's fp8 scaled files; wan_train.models float8_granularity)
    fp8_granularity: str = "channel"

    def __post_init__(self) -> None:
        model = get_size(self.size)  # raises with the known sizes
        temporal, spatial = vae_compression(model.vae)
        stride = spatial * model.dit.patch_size[1]
        problems = []
        if self.frames < 1 or (self.frames - 1) % temporal:
            problems.append(f"frames={self.frames} must be 1 + {temporal}k")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value <= 0 or value % stride:
                problems.append(f"{name}={value} must be a positive multiple of {stride} (VAE {spatial} x patch "
                                f"{model.dit.patch_size[1]})")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if not 0 <= self.references <= MAX_REFERENCES:
            problems.append(f"references={self.references} must be 0..{MAX_REFERENCES}")
        if self.reference_frames < 1 or (self.reference_frames - 1) % temporal:
            problems.append(f"reference_frames={self.reference_frames} must be 1 + {temporal}k")
        if self.lora_rank is not None and self.lora_rank < 1:
            problems.append(f"lora_rank={self.lora_rank} must be >= 1 (None: full fine-tune)")
        if self.lora_target not in TARGET_PRESETS:
            problems.append(f"lora_target={self.lora_target!r} is not one of {list(TARGET_PRESETS)}")
        if problems:
            raise ValueError("workload: " + "; ".join(problems))

    @property
    def model(self) -> ModelSize:
        return get_size(self.size)

    @property
    def lora(self) -> bool:
        return self.lora_rank is not None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(F, H, W) of the video's latent."""
        _, spatial = vae_compression(self.model.vae)
        return self._latent_frames(self.frames), self.height // spatial, self.width // spatial

    @property
    def sequence_shape(self) -> tuple[int, int, int]:
        """(F, H, W) of the latent the blocks run on: the video's, with the references' frames appended."""
        f, h, w = self.latent_shape
        return f + self.references * self._latent_frames(self.reference_frames), h, w

    def _latent_frames(self, frames: int) -> int:
        """The VAE keeps frame 0 and compresses each further ``temporal`` frames to one (each clip on its own)."""
        temporal, _ = vae_compression(self.model.vae)
        return 1 + (frames - 1) // temporal

    @property
    def tokens(self) -> int:
        """Tokens per sample (video and references): the sequence's latent grid over the patch (1, 2, 2)."""
        return math.prod(n // p for n, p in zip(self.sequence_shape, self.model.dit.patch_size, strict=True))

    @property
    def per_token_time(self) -> bool:
        """Whether the blocks get a timestep per token: TI2V's clean first frame, R2V's clean references."""
        return self.model.dit.model_type == "ti2v" or self.references > 0

    def describe(self) -> str:
        f, h, w = self.latent_shape
        tune = f"LoRA rank {self.lora_rank} ({self.lora_target})" if self.lora else "full fine-tune"
        refs = (f" + {self.references} reference{'s' if self.references > 1 else ''} x {self.reference_frames} "
                f"frame{'s' if self.reference_frames > 1 else ''}" if self.references else "")
        return (f"{self.size}, {tune}, {self.width}x{self.height}x{self.frames}{refs} (latent {f}x{h}x{w}, "
                f"{self.tokens} tokens), batch {self.batch_size}")


@dataclass(frozen=True, kw_only=True)
class Setting:
    """What the planner chooses: the memory group's fields and model.activation_checkpointing."""

    base_dtype: str  # float32 | bfloat16 | float8_e4m3fn (a LoRA run's frozen base; full fine-tunes train float32)
    activation_checkpointing: bool
    offload_activations: bool
    offload_blocks: int
    prefetch_blocks: int = 1

    def __post_init__(self) -> None:
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype={self.base_dtype!r}: expected one of {list(BASE_DTYPES)}")
        if self.offload_blocks < 0 or self.prefetch_blocks < 1:
            raise ValueError(f"offload_blocks={self.offload_blocks} must be >= 0 and prefetch_blocks="
                             f"{self.prefetch_blocks} >= 1")

    def placement(self) -> Placement:
        return Placement(base_dtype=self.base_dtype, offload_blocks=self.offload_blocks,
                         prefetch_blocks=self.prefetch_blocks, offload_activations=self.offload_activations)

    def overrides(self) -> list[str]:
        """The train.py overrides that run this setting."""
        out = [f"memory.base_dtype={self.base_dtype}", f"memory.offload_blocks={self.offload_blocks}",
               f"memory.offload_activations={str(self.offload_activations).lower()}",
               f"model.activation_checkpointing={str(self.activation_checkpointing).lower()}"]
        if self.offload_blocks and self.prefetch_blocks != 1:
            out.insert(2, f"memory.prefetch_blocks={self.prefetch_blocks}")
        return out


@dataclass
class Estimate:
    parts: dict[str, int]  # bytes per component (module docstring); they sum to peak
    peak: int  # bytes: the estimate of torch.cuda.max_memory_allocated over one step
    step_seconds: float  # estimated (speed model in the module docstring)
    host_bytes: int  # pinned host memory the setting needs

    def biggest(self, count: int = 3) -> list[tuple[str, int]]:
        return sorted(((k, v) for k, v in self.parts.items() if v > 0), key=lambda kv: -kv[1])[:count]


# ---------------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class WeightCount:
    """Parameters of one DiT as placed on the device. Blocks are identical, so one block of a 1-block model stands
    for each of the L blocks (tests check this against the whole model)."""

    num_layers: int
    frozen_block: int  # bytes of one block's frozen parameters and buffers: what block offload moves
    frozen_other: int  # bytes of the frozen parameters and buffers outside the blocks
    trained_block: int  # trained parameters (count) per block
    trained_other: int
    linear_block: int  # weights (count) of one block's linear layers
    linear_other: int  # of the linear / conv layers outside the blocks

    @property
    def frozen(self) -> int:
        return self.frozen_other + self.num_layers * self.frozen_block

    @property
    def trained(self) -> int:
        return self.trained_other + self.num_layers * self.trained_block


@functools.lru_cache(maxsize=64)
def weight_count(dit: DiTConfig, *, lora_rank: int | None, lora_target: str, base_dtype: str,
                 fp8_granularity: str = "channel") -> WeightCount:
    """Built on the meta device (no memory, no time): peft's injection and place_base's storage rule run as is."""
    with torch.device("meta"):
        model = WanDiT(dit.replace(num_layers=1))
    linear = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear,
                                                                                     torch.nn.Conv3d))}
    if lora_rank is None:
        model.requires_grad_(True)
    else:
        add_adapter(model, target=lora_target, rank=lora_rank, alpha=float(lora_rank))
        place_base(model, Placement(base_dtype=base_dtype, fp8_granularity=fp8_granularity))
    tensors = [(n, p, p.requires_grad) for n, p in model.named_parameters()]
    tensors += [(n, b, False) for n, b in model.named_buffers()]
    in_block = [n.startswith("blocks.0.") for n, _, _ in tensors]
    frozen = [t.numel() * t.element_size() * (not trained) for _, t, trained in tensors]
    trained = [t.numel() * trained for _, t, trained in tensors]
    return WeightCount(
        num_layers=dit.num_layers,
        frozen_block=sum(b for b, inside in zip(frozen, in_block, strict=True) if inside),
        frozen_other=sum(b for b, inside in zip(frozen, in_block, strict=True) if not inside),
        trained_block=sum(c for c, inside in zip(trained, in_block, strict=True) if inside),
        trained_other=sum(c for c, inside in zip(trained, in_block, strict=True) if not inside),
        linear_block=sum(c for n, c in linear.items() if n.startswith("blocks.0.")),
        linear_other=sum(c for n, c in linear.items() if not n.startswith("blocks.")),
    )


# ------------------------------------------------------------------------------------------------ activations
@dataclass(frozen=True)
class _Linear:
    name: str  # in the block: self_attn.q, ffn.0, ...
    fan_in: int
    fan_out: int
    stream: str  # the tokens it runs on: video | text | image


def block_linears(dit: DiTConfig) -> list[_Linear]:
    d, f = dit.dim, dit.ffn_dim
    out = [_Linear(f"self_attn.{p}", d, d, "video") for p in "qkvo"]
    out += [_Linear("cross_attn.q", d, d, "video"), _Linear("cross_attn.o", d, d, "video"),
            _Linear("cross_attn.k", d, d, "text"), _Linear("cross_attn.v", d, d, "text")]
    if dit.has_image_branch:
        out += [_Linear("cross_attn.k_img", d, d, "image"), _Linear("cross_attn.v_img", d, d, "image")]
    return out + [_Linear("ffn.0", d, f, "video"), _Linear("ffn.2", f, d, "video")]


def adapted_linears(dit: DiTConfig, *, lora_rank: int | None, lora_target: str) -> list[_Linear]:
    """The block linears a LoRA preset adapts (the preset's own pattern, as peft matches it)."""
    if lora_rank is None:
        return []
    pattern = re.compile(target_pattern(lora_target))
    return [lin for lin in block_linears(dit) if pattern.fullmatch(f"blocks.0.{lin.name}")]


@dataclass(frozen=True)
class BlockActivations:
    """Bytes one WanBlock saves for backward, for a batch (module docstring; tests/unit/test_plan.py measures it)."""

    video: int  # terms per video token, times B T (includes the block's input, ``input``)
    context: int  # terms per text / image token, times B (S + I)
    constant: int  # per-block tensors (modulation sums, bf16 copies of the LoRA factors)
    weight_copies: int  # bf16 copies autocast makes of a float32 frozen base's weights (LoRA on float32)
    input: int  # the block's input x: float32 [B, T, D]

    @property
    def total(self) -> int:
        return self.video + self.context + self.constant + self.weight_copies


def block_activations(dit: DiTConfig, *, tokens: int, batch: int = 1, lora_rank: int | None = None,
                      lora_target: str = "attn_qkvo_ffn", base_dtype: str = "bfloat16", full_finetune: bool = False,
                      per_token_time: bool = False, text_tokens: int | None = None,
                      image_tokens: int | None = None) -> BlockActivations:
    """What autograd keeps from one block's forward under bf16 autocast (GPU kernels: fused RMSNorm, flash SDPA).

    Frozen base (LoRA, or nothing trained), per video token and sample:
      LN1, LN3, LN2 inputs (float32) + mean, rstd        3 x (4 D + 8)
      self q, k and cross q RMSNorm inputs (float32) + rstd  3 x (4 D + 4)   (RoPE saves only its cos/sin tables)
      self SDPA q, k, v, out (bf16) + logsumexp (float32)  8 D + 4 N
      cross SDPA q, out + logsumexp                        4 D + 4 N  (+ 2 D + 4 N for the image attention)
      GELU input (bf16)                                    2 F
      per adapted linear: peft casts the input to float32, autocast back to bf16: a new bf16 copy of the input
      (2 fan_in) saved by lora_A, and lora_B's input (2 r)
      = 36 D + 2 F + 36 + 8 N + sum over adapted video linears of (2 fan_in + 2 r)
    Per text token: cross SDPA k, v (bf16) 4 D; a LoRA on k or v adds its (2 D + 2 r), and on k puts norm_k on the
    gradient path (its float32 input and rstd, 4 D + 4). Image tokens alike with k_img, v_img.
    Per block: the modulation sum (modulation + e0, float32 6 D) and (1 + scale) x 2: 32 D (per token with
    per-token timesteps, TI2V); the bf16 copies autocast caches of the LoRA factors (2 r (in + out); only B's for
    text / image linears, whose input needs no gradient). Frozen base linears save their weight, not their input:
    a bf16 or float8 base adds nothing; a float32 base adds autocast's bf16 copy of every video linear's weight
    (and, with an image branch, a second bf16 copy of q: 2 D per video token).

    Full fine-tune (float32 trained weights): also the inputs of every linear (autocast's bf16 copies: q, k, v get
    one each), the modulation products' other operands (norm outputs, attention and FFN outputs, float32), the
    GELU output: per video token 62 D + 4 F + 36 + 8 N (+ 6 D + 4 N with an image branch), per text / image token
    12 D + 4. Its weight copies are the autocast cache (``Estimate.parts``), not counted here.
    """
    d, f, n = dit.dim, dit.ffn_dim, dit.num_heads
    s = dit.text_len if text_tokens is None else text_tokens
    i = ((dit.image_pos_len or CLIP_TOKENS) if image_tokens is None else image_tokens) if dit.has_image_branch else 0
    image = dit.has_image_branch
    mod = 32 * d * (tokens if per_token_time else 1)
    if full_finetune:
        video = 62 * d + 4 * f + 36 + 8 * n + (6 * d + 4 * n if image else 0)
        return BlockActivations(video=batch * tokens * video, context=batch * (s + i) * (12 * d + 4),
                                constant=batch * mod, weight_copies=0, input=batch * tokens * 4 * d)
    video = 36 * d + 2 * f + 36 + 8 * n + (2 * d + 4 * n if image else 0)
    per_stream = {"text": 4 * d, "image": 4 * d}
    factors = 0  # bf16 copies of the LoRA factors: per block, not per sample
    r = lora_rank or 0
    for lin in adapted_linears(dit, lora_rank=lora_rank, lora_target=lora_target):
        if lin.stream == "video":
            video += 2 * lin.fan_in + 2 * r
            factors += 2 * r * (lin.fan_in + lin.fan_out)
        else:  # norm_k / norm_k_img join the gradient path when k / k_img is adapted
            per_stream[lin.stream] += 2 * lin.fan_in + 2 * r + (4 * d + 4 if lin.name.startswith("cross_attn.k") else 0)
            factors += 2 * r * lin.fan_out
    copies = 0
    if base_dtype == "float32":
        copies = sum(2 * lin.fan_in * lin.fan_out for lin in block_linears(dit) if lin.stream == "video")
        video += 2 * d if image else 0  # q is float32 then: each of the two SDPA calls casts its own bf16 copy
    context = batch * (s * per_stream["text"] + i * per_stream["image"])
    return BlockActivations(video=batch * tokens * video, context=context, constant=batch * mod + factors,
                            weight_copies=copies, input=batch * tokens * 4 * d)


def backward_working_set(dit: DiTConfig, *, tokens: int, batch: int, ffn2_adapted: bool) -> int:
    """Gradient buffers of one block's backward beyond its saved tensors (an estimate: module docstring)."""
    d, f = dit.dim, dit.ffn_dim
    ffn = (6 if ffn2_adapted else 4) * f
    return batch * tokens * (8 * d + max(ffn, 12 * d))


# -------------------------------------------------------------------------------------------------- estimate
def estimate(workload: Workload, setting: Setting, *, gpu) -> Estimate:
    """Peak device bytes, host bytes and step time of ``setting`` for ``workload`` on ``gpu`` (a plan.gpus.Gpu)."""
    dit = workload.model.dit
    layers = dit.num_layers
    _check(workload, setting, layers)
    b, t, d = workload.batch_size, workload.tokens, dit.dim
    full = not workload.lora
    weights = weight_count(dit, lora_rank=workload.lora_rank, lora_target=workload.lora_target,
                           base_dtype="float32" if full else setting.base_dtype,
                           fp8_granularity=workload.fp8_granularity)
    acts = block_activations(dit, tokens=t, batch=b, lora_rank=workload.lora_rank, lora_target=workload.lora_target,
                             base_dtype=setting.base_dtype, full_finetune=full, per_token_time=workload.per_token_time)
    offloaded = setting.offload_blocks
    window = 1 + setting.prefetch_blocks  # offloaded blocks on the device at once (wan_train.memory.offload)
    checkpointed = layers if setting.activation_checkpointing else offloaded
    plain = layers - checkpointed
    act_offload = setting.offload_activations
    residual = acts.input  # float32 [B, T, D]

    device_weights = weights.frozen - max(0, offloaded - window) * weights.frozen_block
    trained = TRAINED_BYTES_PER_PARAM * weights.trained
    stored_plain = 0 if act_offload else plain * acts.total
    stored_inputs = residual if act_offload else checkpointed * residual  # with offload: one in flight
    head = _outside_blocks(workload, final_residual=0 if act_offload else residual, full=full)
    ffn2 = any(lin.name == "ffn.2" for lin in adapted_linears(dit, lora_rank=workload.lora_rank,
                                                                 lora_target=workload.lora_target))
    transient = 0 if setting.base_dtype == "bfloat16" or full else 2 * max(d * d, d * dit.ffn_dim)
    live = backward_working_set(dit, tokens=t, batch=b, ffn2_adapted=ffn2 and not full) + transient
    if checkpointed:
        live += acts.total - (0 if act_offload else residual)  # its input is among the stored ones
    common = {"weights": device_weights, "trainable+optimizer": trained, "block activations": stored_plain,
              "checkpointed inputs": stored_inputs if checkpointed else 0, "embeddings+head+loss": head}
    backward = {**common, "autocast weight copies": 0, "live block": live}
    if full:  # autocast's cache of bf16 weight copies: all of them at the end of the forward (module docstring)
        all_copies = 2 * (weights.linear_other + layers * weights.linear_block)
        backward["autocast weight copies"] = 2 * (weights.linear_other
                                                  + (plain + (1 if checkpointed else 0)) * weights.linear_block)
        forward = {**common, "autocast weight copies": all_copies, "live block": 0}
        parts = max(forward, backward, key=lambda p: sum(p.values()))
    else:
        parts = backward
    host = offloaded * weights.frozen_block
    if act_offload:
        host += _offloaded_activations(workload, acts, checkpointed=checkpointed, plain=plain)
    return Estimate(parts=parts, peak=sum(parts.values()), host_bytes=host,
                    step_seconds=step_seconds(workload, setting, gpu=gpu, weights=weights, acts=acts))


def _check(workload: Workload, setting: Setting, layers: int) -> None:
    if setting.offload_blocks > layers:
        raise ValueError(f"offload_blocks={setting.offload_blocks}: {workload.size} has {layers} blocks")
    if not workload.lora and (setting.offload_blocks or setting.base_dtype == "float8_e4m3fn"):
        raise ValueError(f"{setting}: float8 storage and block offload need a frozen base (a LoRA workload)")


def _context_bytes(workload: Workload) -> int:
    """The DiT's text (+ image) context, bf16 [B, S + I, D]: saved by every block, stored once."""
    dit = workload.model.dit
    image = (dit.image_pos_len or CLIP_TOKENS) if dit.has_image_branch else 0
    return 2 * workload.batch_size * (dit.text_len + image) * dit.dim


def _rope_bytes(workload: Workload) -> int:
    """cos and sin tables, float32 [T, K/2] each, shared by the batch."""
    return 4 * workload.tokens * workload.model.dit.head_dim


def _outside_blocks(workload: Workload, *, final_residual: int, full: bool) -> int:
    """The head's input, the context, time embeddings, RoPE tables and the loss tensors (module docstring)."""
    dit = workload.model.dit
    b, t, d = workload.batch_size, workload.tokens, dit.dim
    patch = math.prod(dit.patch_size)
    context = _context_bytes(workload) + 4 * b * dit.text_len * dit.text_dim  # + the encoder output, float32
    if full:  # the text MLP saves its inputs: the bf16 encoder output, GELU input, second linear's input
        context += 2 * b * dit.text_len * (dit.text_dim + 2 * d)
    if dit.has_image_branch:
        context += 4 * b * (dit.image_pos_len or CLIP_TOKENS) * dit.image_dim  # clip_fea, float32
    time = 28 * b * d * (t if dit.model_type == "ti2v" else 1)  # e [B, 1|T, D] + e0 [B, 1|T, 6, D], float32
    loss = LOSS_TENSORS * 4 * b * t * patch * dit.out_dim + 4 * b * t * patch * (dit.in_dim - dit.out_dim)  # + y
    return final_residual + context + time + _rope_bytes(workload) + loss


def _offloaded_activations(workload: Workload, acts: BlockActivations, *, checkpointed: int, plain: int) -> int:
    """Host bytes of activation offload: what would have stayed on the device, the context and RoPE tables once."""
    return (checkpointed * acts.input + plain * acts.total + acts.input + _context_bytes(workload)
            + _rope_bytes(workload))


def vae_compression(vae: str) -> tuple[int, int]:
    """(temporal, spatial) compression of a model's VAE (the pixel-space stand-in for "pixel")."""
    if vae == "pixel":
        pixel = builtin_vae()
        return pixel.temporal_compression, pixel.spatial_compression
    return VAE_CONFIGS[vae].temporal_compression, VAE_CONFIGS[vae].spatial_compression


# ----------------------------------------------------------------------------------------------------- speed
def block_forward_flops(dit: DiTConfig, latent_shape: tuple[int, int, int], *, batch: int) -> float:
    """One block's forward FLOPs: dit_flops of L + 1 blocks minus that of L (its formula, not a copy of it)."""
    more = dit_flops(dit.replace(num_layers=dit.num_layers + 1), latent_shape, batch=batch).total
    return more - dit_flops(dit, latent_shape, batch=batch).total


def step_seconds(workload: Workload, setting: Setting, *, gpu, weights: WeightCount | None = None,
                 acts: BlockActivations | None = None) -> float:
    """Estimated seconds per step (module docstring): compute, plus the transfers the compute does not hide."""
    dit = workload.model.dit
    layers, b = dit.num_layers, workload.batch_size
    full = not workload.lora
    weights = weights or weight_count(dit, lora_rank=workload.lora_rank, lora_target=workload.lora_target,
                                      base_dtype="float32" if full else setting.base_dtype,
                                      fp8_granularity=workload.fp8_granularity)
    acts = acts or block_activations(dit, tokens=workload.tokens, batch=b, lora_rank=workload.lora_rank,
                                     lora_target=workload.lora_target, base_dtype=setting.base_dtype,
                                     full_finetune=full, per_token_time=workload.per_token_time)
    offloaded = setting.offload_blocks
    checkpointed = layers if setting.activation_checkpointing else offloaded
    flops_per_s = gpu.bf16_tflops * 1e12 * MFU_ASSUMED
    link = gpu.host_link_gbs * 1e9 * HOST_LINK_EFFICIENCY
    block = block_forward_flops(dit, workload.sequence_shape, batch=b) / flops_per_s
    compute = (TRAIN_FLOPS_PER_FORWARD * dit_flops(dit, workload.sequence_shape, batch=b).total / flops_per_s
               + checkpointed * block)
    exposed = 0.0
    if offloaded:
        copy = weights.frozen_block / link
        exposed += copy + (offloaded - 1) * max(0.0, copy - block)  # forward: the first one is not prefetched
        exposed += (offloaded - 1) * max(0.0, copy - 3 * block)  # backward: the last block stayed resident
    if setting.offload_activations:
        shared = _context_bytes(workload) + _rope_bytes(workload)  # unpacked again by every block's backward
        out = _offloaded_activations(workload, acts, checkpointed=checkpointed, plain=layers - checkpointed)
        exposed += (2 * out + layers * shared) / link
    uses = 2 * layers + checkpointed  # forward + backward of every block, + each recompute
    if setting.base_dtype == "float8_e4m3fn":
        exposed += FP8_DEQUANT_BYTES * uses * weights.linear_block / (gpu.hbm_gbs * 1e9)
    elif setting.base_dtype == "float32" and not full:
        exposed += FP32_CAST_BYTES * uses * weights.linear_block / (gpu.hbm_gbs * 1e9)
    return compute + exposed
