"""THE denoising loop: prompts (+ images) -> text context and task conditioning -> noise -> solver steps with
classifier-free guidance and MoE expert switching -> VAE decode. Training validation, generate.py and eval/ all
call `generate`, so what is evaluated is what users get (wan_arch.md §4-5).

Determinism: the initial noise of prompt i is drawn on the CPU from a generator seeded with seed + i, so a video
depends on its (prompt, seed + i, settings) only: not on the device, the batch it was in, or its position."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wan_train.flow import expert_for_sigma, to_timestep
from wan_train.inference.conditioning import i2v_mask
from wan_train.inference.joint import JointLayout, joint_velocity
from wan_train.inference.presets import Sampling
from wan_train.inference.references import check_tags
from wan_train.inference.shot_inputs import decode_shots, latent_frames, shot_context, shot_layout
from wan_train.inference.shots import prompt_shots, shot_frames
from wan_train.inference.schedules import sampling_sigmas
from wan_train.inference.solvers import get_solver
from wan_train.lora import applied, check_base, load_lora, merged
from wan_train.models import DiTConfig, OviDiT, ShotLayout, WanDiT

# the tasks each DiT model_type can do; "ti2v" is the TI2V-5B name of its image-to-video mode
TASKS = {"t2v": ("t2v",), "i2v": ("i2v",), "flf2v": ("flf2v",), "ti2v": ("t2v", "i2v", "ti2v")}
AV_TASKS = ("t2av", "ti2av")  # an audio-video model (Ovi): video and sound, from text (and a first frame)


@dataclass
class WanModels:
    """What the loop runs: one DiT (key None) or the two Wan2.2 A14B experts ("high_noise", "low_noise") with their
    boundary; the frozen encoders; `size` names the architecture for the official settings (presets.size_name)."""

    dits: dict[str | None, WanDiT]
    vae: nn.Module
    text_encoder: object  # WanTextEncoder: encode(prompts) -> (context [B, 512, D], lengths [B])
    clip: nn.Module | None = None  # Wan2.1 I2V / FLF2V only
    boundary: float | None = None
    size: str | None = None
    # audio-video models (the DiT an OviDiT): the audio autoencoder (encode / decode, sample_rate,
    # samples_per_latent, latent_length; wan_train.models.audio)
    audio_vae: nn.Module | None = None

    def __post_init__(self) -> None:
        if set(self.dits) not in ({None}, {"high_noise", "low_noise"}):
            raise ValueError(f"dits has keys {sorted(map(str, self.dits))}: expected one DiT (key None) or both "
                             "experts ('high_noise', 'low_noise')")
        if self.is_moe and self.boundary is None:
            raise ValueError("two experts need the boundary at which the low-noise expert takes over")
        if self.has_audio and self.audio_vae is None:
            raise ValueError("an audio-video DiT (OviDiT) needs the audio autoencoder (audio_vae)")

    @property
    def is_moe(self) -> bool:
        return None not in self.dits

    @property
    def config(self) -> DiTConfig:
        return next(iter(self.dits.values())).config

    @property
    def has_audio(self) -> bool:
        return any(isinstance(dit, OviDiT) for dit in self.dits.values())

    @property
    def tasks(self) -> tuple[str, ...]:
        if self.has_audio:
            return AV_TASKS
        references = any(dit.config.references for dit in self.dits.values())
        return TASKS[self.config.model_type] + (("r2v",) if references else ())

    @property
    def stride(self) -> tuple[int, int]:
        """(temporal, spatial) pixels per latent token step: the VAE's compression times the DiT's patch."""
        pt, ph, _ = self.config.patch_size
        return self.vae.temporal_compression * pt, self.vae.spatial_compression * ph


@dataclass(frozen=True)
class Adapter:
    """A LoRA file applied for one request with `strength`; to every DiT, or to one expert (`expert`). base: the
    identity of the base it was trained on (wan_train.lora.resolve); a DiT with another identity refuses it."""

    path: str
    strength: float = 1.0
    expert: str | None = None
    base: str | None = None


@dataclass
class Conditioning:
    """The task inputs of a batch, besides text: y (I2V/FLF2V: mask + image latent, [B, 4 + Z, T, h, w]),
    clip_fea (Wan2.1 I2V: [B, 257 (x2), 1280]), first (TI2V: the clean first latent frame [B, Z, 1, h, w]), refs
    (reference-to-video)."""

    y: torch.Tensor | None = None
    clip_fea: torch.Tensor | None = None
    first: torch.Tensor | None = None
    refs: list[torch.Tensor] | None = None  # R2V: clean reference latents [B, Z, f_j, h, w], @Video{j+1}
    shots: ShotLayout | None = None  # multi-shot: the shots' frames and captions (context is shot_context's)
    joint: JointLayout | None = None  # audio-video: the state is video and audio latents (inference.joint)
    audio_negative: torch.Tensor | None = None  # audio-video: the audio tower's negative prompt [1, S, D]
    audio_refs: list[torch.Tensor] | None = None  # audio-video: clean reference voices [B, Za, L_j], @Video{j+1}


def check_request(models: WanModels, task: str, settings: Sampling) -> None:
    """Clear errors for a task the model cannot do and a size its strides do not allow."""
    if task not in models.tasks:
        raise ValueError(f"task={task!r}: this {models.config.model_type} model can do {', '.join(models.tasks)}")
    t, s = models.stride
    problems = []
    for name in ("width", "height"):
        value = getattr(settings, name)
        if value % s:
            below = value // s * s
            problems.append(f"{name}={value} is not a multiple of {s} (VAE stride x patch size); use "
                            + (f"{below} or {below + s}" if below else f"{s}"))
    if (settings.num_frames - 1) % t:
        below = 1 + (settings.num_frames - 1) // t * t
        problems.append(f"num_frames={settings.num_frames} is not 1 + {t}k; use {below} or {below + t}")
    if problems:
        raise ValueError("this model cannot make that video: " + "; ".join(problems))


def latent_shape(models: WanModels, settings: Sampling) -> tuple[int, int, int, int]:
    vae = models.vae
    t, s = vae.temporal_compression, vae.spatial_compression
    return models.config.out_dim, 1 + (settings.num_frames - 1) // t, settings.height // s, settings.width // s


def initial_noise(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """[len(seeds), *shape] float32 on the CPU; row i from torch.Generator('cpu').manual_seed(seeds[i])."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)


@torch.no_grad()
def encode_text(models: WanModels, prompts: Sequence[str], negative_prompt: str | None, *,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context [B, S, D], negative [1, S, D] or None) float32 on `device`, trimmed to the longest prompt (the
    DiT zero-pads to 512 again, and the encoder zeroed everything past each prompt's end)."""
    context, lengths = models.text_encoder.encode(list(prompts))
    negative = None
    if negative_prompt is not None:
        negative, neg_lengths = models.text_encoder.encode([negative_prompt])
        lengths = torch.cat([lengths, neg_lengths])
    keep = int(lengths.max())
    context = context[:, :keep].to(device, torch.float32)
    return context, None if negative is None else negative[:, :keep].to(device, torch.float32)


@torch.no_grad()
def condition(models: WanModels, task: str, images: torch.Tensor | None, last_images: torch.Tensor | None,
              settings: Sampling, *, device: torch.device, references: Sequence[torch.Tensor] = (),
              batch: int = 1) -> Conditioning:
    """images / last_images: [B, 3, H, W] in [-1, 1] at the output size (inference.images prepares them);
    references (task r2v): each [3, f, H, W] in [-1, 1] at the output size (inference.references reads them)."""
    cfg, vae = models.config, models.vae
    if task == "r2v" or references:
        return reference_condition(models, task, references, settings, device=device, batch=batch)
    if task == "t2v":
        if images is not None:
            raise ValueError("images were given for task='t2v'; pass the model's image task (i2v / flf2v)")
        return Conditioning()
    if images is None or (task == "flf2v" and last_images is None):
        raise ValueError(f"task={task!r} needs " + ("image and last_image" if task == "flf2v" else "an image"))
    images = images.to(_device_of(vae), torch.float32)
    if cfg.model_type == "ti2v":  # wan_arch.md §5.2: the first latent frame is the encoded image
        return Conditioning(first=vae.encode(images[:, :, None]).float().to(device))
    b, _, h, w = images.shape
    video = torch.zeros(b, 3, settings.num_frames, h, w, device=images.device)
    video[:, :, 0] = images
    if task == "flf2v":
        video[:, :, -1] = last_images.to(images)
    latent = vae.encode(video).float()  # the zero frames are encoded too (§5.1)
    mask = i2v_mask(settings.num_frames, *latent.shape[-2:], temporal_compression=vae.temporal_compression,
                    last=task == "flf2v")
    y = torch.cat([mask.to(latent).expand(b, -1, -1, -1, -1), latent], dim=1).to(device)
    clip_fea = None
    if cfg.has_image_branch:
        frames = [images] + ([last_images.to(images)] if task == "flf2v" else [])
        clip = models.clip.to(device) if models.clip is not None else None
        if clip is None:
            raise ValueError(f"this {cfg.model_type} model has a CLIP image branch: the CLIP encoder is needed")
        clip_fea = torch.cat([clip.encode(f.to(device)).float() for f in frames], dim=1)
    return Conditioning(y=y, clip_fea=clip_fea)


def reference_condition(models: WanModels, task: str, references: Sequence[torch.Tensor], settings: Sampling, *,
                        device: torch.device, batch: int) -> Conditioning:
    """Each reference VAE-encoded on its own (a clip of f frames -> 1 + (f - 1) / 4 latent frames, an image -> 1)."""
    if task != "r2v":
        raise ValueError(f"references were given for task={task!r}; pass task=r2v")
    if not references:
        raise ValueError("task=r2v needs references (generate.py refs=[a.png,b.mp4])")
    expected = (3, settings.height, settings.width)
    for j, ref in enumerate(references):
        if ref.ndim != 4 or (ref.shape[0], *ref.shape[2:]) != expected:
            raise ValueError(f"reference {j + 1} (@Video{j + 1}) has shape {tuple(ref.shape)}; expected [3, f, "
                             f"{settings.height}, {settings.width}] (fit it with wan_train.inference.references)")
    vae = models.vae
    latents = [vae.encode(ref[None].to(_device_of(vae), torch.float32)).float().to(device) for ref in references]
    return Conditioning(refs=[z.expand(batch, -1, -1, -1, -1) for z in latents])


class ExpertSwitch:
    """The DiT of each step: the high-noise expert for sigma >= boundary, the low-noise one below (the official
    rule, flow.expert_for_sigma); with `offload`, the idle expert waits on the CPU."""

    def __init__(self, models: WanModels, device: torch.device, *, offload: bool):
        self.models, self.device, self.offload = models, device, offload
        self.active: str | None = None
        if not offload:
            for dit in models.dits.values():
                dit.to(device)

    def expert_for(self, sigma: float) -> str | None:
        return expert_for_sigma(sigma, self.models.boundary) if self.models.is_moe else None

    def __call__(self, sigma: float) -> tuple[str | None, WanDiT]:
        expert = self.expert_for(sigma)
        if self.offload and expert != self.active:
            for name, dit in self.models.dits.items():
                if name != expert:
                    dit.to("cpu")
            self.models.dits[expert].to(self.device)
        self.active = expert
        return expert, self.models.dits[expert]


def guided_velocity(dit: WanDiT, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    negative: torch.Tensor | None, cond: Conditioning, scale: float,
                    reference_scale: float = 1.0) -> torch.Tensor:
    """v = v_u + scale * (v_c - v_u) (Ho & Salimans 2022), both branches in one batch of 2B sharing y and
    clip_fea; scale 1 (or no negative) runs the conditional branch only. With references, the three branches of
    Phantom (wan_arch.md §5.4) in one batch of 3B: v = v_0 + g_ref (v_r - v_0) + g_text (v_rt - v_r), where v_0 has
    zero references and the negative prompt, v_r the references and the negative prompt, v_rt both."""
    if cond.refs and dit.config.references:  # an A14B expert trained without references runs as text-to-video
        return _reference_guided_velocity(dit, x, t, context, negative, cond.refs, scale, reference_scale)
    if cond.shots is not None and dit.config.shots:
        return _shot_guided_velocity(dit, x, t, context, negative, cond.shots, scale)
    if scale == 1.0 or negative is None:
        return dit(x, t, context, y=cond.y, clip_fea=cond.clip_fea).float()
    b = x.shape[0]

    def twice(v):
        return None if v is None else torch.cat([v, v])

    context, negative = _same_length(context, negative)
    both = dit(twice(x), twice(t), torch.cat([context, negative.expand(b, -1, -1)]), y=twice(cond.y),
               clip_fea=twice(cond.clip_fea)).float()
    v_c, v_u = both[:b], both[b:]
    return v_u + scale * (v_c - v_u)


def _reference_guided_velocity(dit: WanDiT, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                               negative: torch.Tensor | None, refs: list[torch.Tensor], scale: float,
                               reference_scale: float) -> torch.Tensor:
    if negative is None or (scale == 1.0 and reference_scale == 1.0):
        return dit(x, t, context, refs=refs).float()
    b = x.shape[0]
    context, negative = _same_length(context, negative)
    negative = negative.expand(b, -1, -1)
    three = dit(torch.cat([x, x, x]), torch.cat([t, t, t]), torch.cat([negative, negative, context]),
                refs=[torch.cat([torch.zeros_like(r), r, r]) for r in refs]).float()
    v_0, v_r, v_rt = three[:b], three[b:2 * b], three[2 * b:]
    return v_0 + reference_scale * (v_r - v_0) + scale * (v_rt - v_r)


def _shot_guided_velocity(dit: WanDiT, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                          negative: torch.Tensor | None, shots: ShotLayout, scale: float) -> torch.Tensor:
    """CFG for a multi-shot batch: the conditional branch reads the shots' captions through the layout, the
    unconditional one the negative prompt as a global caption that every shot sees."""
    if scale == 1.0 or negative is None:
        return dit(x, t, context, shots=shots).float()
    b = x.shape[0]
    context, negative = _same_length(context, negative)
    text = F.pad(shots.text_shots, (0, context.shape[1] - shots.text_shots.shape[1]), value=-1)
    layout = ShotLayout(torch.cat([shots.frame_shots, shots.frame_shots]), torch.cat([text, torch.full_like(text, -1)]))
    both = dit(torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, negative.expand(b, -1, -1)]),
               shots=layout).float()
    v_c, v_u = both[:b], both[b:]
    return v_u + scale * (v_c - v_u)


def _same_length(context: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths, zero-padded to the longer one (the DiT zero-pads to text_len anyway)."""
    length = max(context.shape[1], negative.shape[1])
    return tuple(F.pad(c, (0, 0, 0, length - c.shape[1])) for c in (context, negative))


def first_frame_timesteps(t: torch.Tensor, latent_shape: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
    """TI2V per-token timesteps [B, L]: 0 on the tokens of latent frame 0 (the given image), t elsewhere."""
    _, frames, h, w = latent_shape
    per_frame = (h // patch[1]) * (w // patch[2])
    t_BL = t[:, None].repeat(1, (frames // patch[0]) * per_frame)
    t_BL[:, :per_frame] = 0.0
    return t_BL


@torch.no_grad()
def denoise(models: WanModels, noise: torch.Tensor, context: torch.Tensor, negative: torch.Tensor | None,
            cond: Conditioning, settings: Sampling, *, device: torch.device, offload: bool = False,
            on_step: Callable[[int, int, str | None], None] | None = None) -> torch.Tensor:
    """The solver loop from `noise` [B, Z, T, h, w] to clean latents (float32 on `device`). on_step(done, total,
    expert) after every step."""
    solver = get_solver(settings.solver)
    sigmas = sampling_sigmas(settings.steps, shift=settings.shift, sigma_max=solver.sigma_max)
    # the model's timestep input: 1000 sigma, truncated to an integer where the official scheduler does so
    timesteps = to_timestep(sigmas)
    if solver.integer_timesteps:
        timesteps = timesteps.floor()
    switch = ExpertSwitch(models, device, offload=offload)
    b = noise.shape[0]
    first, joint = cond.first, cond.joint
    # outside guidance_interval a step runs the conditional pass alone: every scale 1
    unguided = settings.replace(guidance_scale=1.0, guidance_scale_2=None, audio_guidance_scale=1.0,
                                reference_guidance_scale=1.0)

    def paste(x: torch.Tensor) -> torch.Tensor:  # TI2V: latent = (1 - m) z + m latent, m = 0 on frame 0
        if first is not None:
            x = x.clone()
            video = x if joint is None else joint.split(x)[0]
            video[:, :, :1] = first
        return x

    def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
        expert, dit = switch(float(sigmas[i]))
        t = torch.full((b,), float(timesteps[i]), device=device)
        t_video = t if first is None else first_frame_timesteps(
            t, x.shape[1:] if joint is None else joint.video[1:], dit.config.patch_size)
        step = settings if settings.guided_at(float(sigmas[i])) else unguided
        if joint is not None:  # the audio tower's timestep is never per token (Ovi's engine)
            return joint_velocity(dit, joint, x, t_video, t, context, negative, cond.audio_negative,
                                  video_scale=step.guidance_scale, audio_scale=step.audio_guidance_scale,
                                  slg_layer=step.slg_layer, audio_refs=cond.audio_refs,
                                  reference_scale=step.reference_guidance_scale)
        t = t_video
        return guided_velocity(dit, x, t, context, negative, cond, step.guidance_for(expert),
                               step.reference_guidance_scale)

    def after_step(x: torch.Tensor, i: int) -> torch.Tensor:
        x = paste(x)
        if on_step is not None:
            on_step(i + 1, settings.steps, switch.active)
        return x

    x = paste(noise.to(device, torch.float32))
    x = solver.fn(velocity, x, sigmas, after_step=after_step)
    if offload and models.is_moe:
        for dit in models.dits.values():
            dit.to("cpu")
    return x


@torch.no_grad()
def generate(models: WanModels, prompts: str | Sequence[str], *, settings: Sampling, seed: int = 0,
             task: str = "t2v", images: torch.Tensor | None = None, last_images: torch.Tensor | None = None,
             adapters: Sequence[Adapter] = (), device: torch.device | str | None = None, offload: bool = False,
             decode: bool = True, on_step: Callable[[int, int, str | None], None] | None = None,
             fuse_lora: bool = False, allow_base_mismatch: bool = False,
             references: Sequence[torch.Tensor] = (), multishot: bool = False,
             shot_count: int | None = None) -> torch.Tensor:
    """Videos [B, 3, F, H, W] float32 in [-1, 1] on the CPU (decode=False: the latents [B, Z, T, h, w]) for a
    batch of prompts; prompt i gets seed + i. images (image tasks): [B or 1, 3, H, W] in [-1, 1] at
    settings.height x settings.width (inference.images fits a picture to the model's rule).
    adapters: applied for this call only (a weighted blend when several); fuse_lora merges them into the weights
    for the call (no per-step extra matmuls) and restores the weights bit for bit afterwards. references (task
    r2v): up to 3, each [3, f, H, W] in [-1, 1] at the output size, the j-th being the prompts' @Video{j+1}.
    multishot (models with the shot extension): each prompt is parsed into shots ("Shot 1: ... Shot 2: ...") or
    planned into `shot_count` shots (wan_train.inference.shots), all shots are denoised jointly, and each shot
    is decoded on its own; the video has sum of the shots' frames (at most settings.num_frames)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    if task in AV_TASKS or models.has_audio:
        raise ValueError(f"task={task!r} on an audio-video model makes sound too: call "
                         "wan_train.inference.av.generate_av")
    check_tags(prompts, len(references))
    # multi-shot: num_frames is the shots' budget, each shot 1 + 4k frames (shot_frames), not one clip's length
    check_request(models, task, settings.replace(num_frames=1) if multishot else settings)
    device = torch.device(device) if device is not None else _device_of(next(iter(models.dits.values())))
    b = len(prompts)
    images, last_images = (_batch(im, b, settings, name) for im, name in ((images, "images"),
                                                                         (last_images, "last_images")))
    use_negative = settings.guidance_scale != 1.0 or settings.guidance_for("low_noise") != 1.0 or (
        bool(references) and settings.reference_guidance_scale != 1.0)
    negative_prompt = settings.negative_prompt if use_negative else None
    shape, per_shot = latent_shape(models, settings), None
    if multishot:  # the context is the shots' captions (shot_condition): the prompts are not encoded whole
        if images is not None or last_images is not None:
            raise ValueError("multi-shot generation is text-to-video: it takes no images")
        context, cond, per_shot = shot_condition(models, prompts, task, settings, shot_count, device=device)
        negative = None if negative_prompt is None else encode_text(models, [negative_prompt], None, device=device)[0]
        shape = (shape[0], sum(per_shot), *shape[2:])
    else:
        context, negative = encode_text(models, prompts, negative_prompt, device=device)
        cond = condition(models, task, images, last_images, settings, device=device, references=references, batch=b)
    noise = initial_noise(shape, [seed + i for i in range(b)])
    with ExitStack() as stack:
        for dit, blend in _blends(models, adapters, allow_base_mismatch=allow_base_mismatch).items():
            stack.enter_context(merged(dit, blend) if fuse_lora else applied(dit, blend))
        latents = denoise(models, noise, context, negative, cond, settings, device=device, offload=offload,
                          on_step=on_step)
    if not decode:
        return latents.cpu()
    vae_device = _device_of(models.vae)
    if per_shot is not None:
        return torch.cat([decode_shots(models.vae, latents[i:i + 1].to(vae_device), per_shot).float().cpu()
                          for i in range(b)])
    return torch.cat([models.vae.decode(latents[i:i + 1].to(vae_device)).float().cpu() for i in range(b)])


def shot_condition(models: WanModels, prompts: Sequence[str], task: str, settings: Sampling,
                   shot_count: int | None, *, device: torch.device) -> tuple[torch.Tensor, Conditioning, list[int]]:
    """(context of the shots' captions, their Conditioning, latent frames per shot) for a multi-shot batch."""
    if task != "t2v":
        raise ValueError(f"multi-shot generation is text-to-video (task=t2v), not task={task!r}")
    if not any(dit.config.shots for dit in models.dits.values()):
        raise ValueError("this model has no multi-shot extension (DiTConfig.shots=0): train recipe=multishot")
    plans = [prompt_shots(p, shots=shot_count) for p in prompts]
    stride = models.vae.temporal_compression
    frames = [shot_frames(plan, num_frames=settings.num_frames, fps=settings.fps, temporal_stride=stride)
              for plan in plans]
    if any(f != frames[0] for f in frames):
        raise ValueError(f"the prompts of one batch plan different shot lengths {frames}: generate them one at a time")
    most = max(dit.config.shots for dit in models.dits.values())
    if len(frames[0]) > most:
        raise ValueError(f"{len(frames[0])} shots asked for; this model knows {most}")
    context, text_shots = shot_context(models.text_encoder, plans, text_len=models.config.text_len, device=device)
    per_shot = latent_frames(frames[0], temporal_compression=stride)
    return context, Conditioning(shots=shot_layout(per_shot, text_shots)), per_shot


def _blends(models: WanModels, adapters: Sequence[Adapter], *, allow_base_mismatch: bool) -> dict:
    """DiT -> [(LoraWeights, strength), ...]: each adapter read once for each DiT it targets, after its base check."""
    blends: dict[nn.Module, list] = {}
    for adapter in adapters:
        targets = [d for e, d in models.dits.items() if adapter.expert in (None, e)]
        if not targets:
            raise ValueError(f"lora {adapter.path}: expert={adapter.expert!r}, but the model's DiTs are "
                             f"{sorted(map(str, models.dits))}")
        for dit in targets:
            check_base(adapter.base, dit, what=f"lora {adapter.path}", allow_mismatch=allow_base_mismatch)
            blends.setdefault(dit, []).append((load_lora(adapter.path, model=dit), adapter.strength))
    return blends


def _batch(images: torch.Tensor | None, b: int, settings: Sampling, name: str) -> torch.Tensor | None:
    if images is None:
        return None
    images = images[None] if images.ndim == 3 else images
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] not in (1, b):
        raise ValueError(f"{name} has shape {tuple(images.shape)}; expected [3, H, W] or [1 or {b}, 3, H, W]")
    if tuple(images.shape[-2:]) != (settings.height, settings.width):
        raise ValueError(f"{name} are {images.shape[-1]}x{images.shape[-2]}, the video is "
                         f"{settings.width}x{settings.height}: fit them with wan_train.inference.images")
    return images.expand(b, -1, -1, -1)


def _device_of(module: nn.Module) -> torch.device:
    param = next(iter(module.parameters()), None)
    if param is None:
        param = next(iter(module.buffers()), None)
    return param.device if param is not None else torch.device("cpu")
