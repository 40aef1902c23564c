"""The LightningModule: thin orchestration of batch -> latents + context -> sigma -> flow objective -> log.

Randomness of a step (sigma, noise) is drawn per sample from a generator seeded by (seed, step, micro-batch,
sample id), where the id is the sample's shard (its folder and file name) and key: not from the global RNG and
not from the rank or the batch position. So a run resumed from a checkpoint draws exactly what the uninterrupted
run drew, and a sample gets the same sigma and noise whichever rank holds it: N ranks x batch B train exactly
like 1 rank x batch N*B on the same samples. The held-out loss uses a fixed set of clips, fixed sigmas
(quantiles of the expert's sigma distribution) and fixed noise, so its value is comparable across steps and
runs.

Twin-tower (audio-video) models train both modalities at once (flow/joint.py): each its own noise level
(flow.audio_sigma) and noise, drawn after the video's from the same per-sample generator, so a sample's video
draws are those of a video-only run; loss = video + flow.audio_weight x audio, with clips without sound training
the video tower only (its audio input is pure noise, sigma 1: the sound unknown). The held-out loss is also reported per modality (val/loss_video, val/loss_audio and per
quantile), both modalities at the same sigma quantile."""

import hashlib
import logging
import random
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from wan_train.flow import (SigmaSampler, conditioning_frame_mask, expert_range, held_out_noise, held_out_sigmas,
                            interpolate, joint_loss, loss_weight, modality_sigmas, mse_per_sample, per_sample_loss,
                            to_timestep, velocity_target)
from wan_train.inference import i2v_condition
from wan_train.inference.shot_inputs import encode_shots, latent_frames, shot_context, shot_layout
from wan_train.inference.shots import Shot, ShotPlan
from wan_train.lora import has_adapter
from wan_train.models import CheckpointError, OviDiT, ShotLayout, WanDiT
from wan_train.models.dit.compile import compile_blocks
from wan_train.parallel.fsdp import reshard
from wan_train.parallel.sequence import sequence_groups
from wan_train.training.optim import build_optimizer

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    latents: torch.Tensor  # [B, C, T, h, w] float32, normalised
    context: torch.Tensor  # [B, L, D] float32 (the DiT zero-pads to 512)
    y: torch.Tensor | None = None  # I2V/FLF2V: [B, 4 + C, T, h, w] mask + conditioning latent
    clip_fea: torch.Tensor | None = None  # models with a CLIP branch: [B, 257 (x2), 1280]
    refs: list[torch.Tensor] | None = None  # R2V: clean reference latents [B, C, f_j, h, w], zero where absent
    shots: ShotLayout | None = None  # multi-shot: each latent frame's shot and each context token's caption
    audio: torch.Tensor | None = None  # audio-video: audio latents [B, Za, La] float32 (zero where there is none)
    has_audio: torch.Tensor | None = None  # audio-video: [B] bool, the clip has sound (else: video loss only)
    audio_refs: list[torch.Tensor] | None = None  # reference voices: clean latents [B, Za, L_j], zero where absent

    def to(self, device: torch.device) -> "Inputs":
        shots = self.shots
        return Inputs(*(None if t is None else t.to(device) for t in (self.latents, self.context, self.y,
                                                                         self.clip_fea)),
                      refs=None if self.refs is None else [r.to(device) for r in self.refs],
                      shots=None if shots is None else ShotLayout(shots.frame_shots.to(device),
                                                                  shots.text_shots.to(device)),
                      audio=None if self.audio is None else self.audio.to(device),
                      has_audio=None if self.has_audio is None else self.has_audio.to(device),
                      audio_refs=None if self.audio_refs is None else [r.to(device) for r in self.audio_refs])


class FlowMatchingModule(L.LightningModule):
    def __init__(self, cfg, *, dit: WanDiT | OviDiT, encoders, boundary: float | None, held_out: list[dict],
                 held_out_sets: dict[str, list[dict]] | None = None):
        super().__init__()
        self.cfg, self.dit, self.encoders = cfg, dit, encoders
        self.sampler = SigmaSampler(**cfg.flow.sampler)
        self.range = expert_range(cfg.expert.name, boundary)
        self.held_out = held_out  # raw batches of one sample each, encoded on first use
        self.held_out_sets = held_out_sets or {}  # named extra sets (data.val_sets): val/<name>/loss
        self._encoded: dict[str, list[Inputs]] = {}
        # LoRA: checkpoints hold the adapter only (the frozen base comes from model.checkpoint on resume), so
        # Lightning must not ask for the base's keys; on_load_checkpoint checks the adapter's instead
        self.twin = isinstance(dit, OviDiT)  # an audio-video model: the joint objective
        self.lora = has_adapter(dit)
        self.strict_loading = not self.lora
        if self.lora:  # every rank loaded the same frozen base: DDP neither broadcasts it at start (14B, float8
            # tensors, offloaded blocks' host copies) nor syncs its buffers; it reduces the adapter's gradients only
            frozen = [f"dit.{n}" for n, p in dit.named_parameters() if not p.requires_grad]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self, frozen + [f"dit.{n}" for n, _ in dit.named_buffers()])

    # ---------------------------------------------------------------------------------------------- inputs
    @torch.no_grad()
    def encode(self, batch: dict) -> Inputs:
        """The DiT inputs of a batch: from cached latents, or encoded here from raw video and prompts."""
        if "latents" in batch:
            inputs = Inputs(batch["latents"].float(), batch["context"].float(), _float(batch.get("y")),
                            _float(batch.get("clip_fea")))
            if self.twin:
                inputs.audio, inputs.has_audio = self.cached_audio(batch)
            return inputs
        # memory.encoders: they stay on the device, visit it to encode (swap), or encode on the host (cpu)
        placement = self.cfg.memory.encoders
        device = torch.device("cpu") if placement == "cpu" else self.device
        self.encoders.to(device)
        video = batch["video"].to(device)
        if "shot_frames" in batch:
            inputs = self.encode_shots(video, batch, device=device)
        else:
            latents = self.encoders.vae.encode(video).float()
            context, _ = self.encoders.text_encoder.encode(batch["prompt"])
            # the whole 512-token context (zero past each prompt, as the DiT pads it anyway): cutting it to the
            # longest prompt would read the lengths back from the device, a sync in every step
            inputs = Inputs(latents, context.float())
        model_type = self.dit.config.model_type
        if model_type in ("i2v", "flf2v"):  # wan_arch.md §5.1: mask + VAE latent of the given frames
            inputs.y = i2v_condition(self.encoders.vae, video, last=model_type == "flf2v")
            if self.dit.config.has_image_branch:
                frames = [video[:, :, 0]] + ([video[:, :, -1]] if model_type == "flf2v" else [])
                inputs.clip_fea = torch.cat([self.encoders.clip.encode(f) for f in frames], dim=1).float()
        if "refs" in batch:
            inputs.refs = self.encode_references(batch["refs"].to(device), batch["ref_mask"].to(device))
        if self.twin:
            inputs.audio, inputs.has_audio = self.encode_audio(batch, device=device)
            if "audio_refs" in batch:
                inputs.audio_refs = self.encode_audio_references(batch["audio_refs"].to(device),
                                                                 batch["audio_ref_mask"].to(device))
        if placement == "swap":
            self.encoders.to("cpu")
        return inputs.to(self.device)

    def encode_audio(self, batch: dict, *, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio latents [B, Za, La] of the clips' sound (batch `audio` [B, T], data.audio=true) and has_audio [B];
        the latents of a clip without sound are zeros, and it trains the video tower only."""
        if "audio" not in batch:
            raise ValueError("an audio-video model trains on batches with `audio` (data.audio=true) or cached "
                             "`audio_latents` (data_tools.cache_latents --audio)")
        has_audio = batch["has_audio"].to(device=device, dtype=torch.bool)
        latents = self.encoders.audio.encode(batch["audio"].to(device).float()).float()
        return torch.where(has_audio[:, None, None], latents, torch.zeros_like(latents)), has_audio

    def encode_audio_references(self, refs: torch.Tensor, present: torch.Tensor) -> list[torch.Tensor]:
        """Reference voices: waves [B, R, T] -> R clean latents [B, Za, L], zero where absent (present [B, R])."""
        return _encode_slots(self.encoders.audio.encode, refs.float(), present)

    @staticmethod
    def cached_audio(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "audio_latents" not in batch:
            raise ValueError("an audio-video model on cached latents needs their `audio_latents` (cache them with "
                             "python -m data_tools.cache_latents --audio mel|DIR)")
        return batch["audio_latents"].float(), batch["has_audio"].bool()

    def encode_shots(self, video: torch.Tensor, batch: dict, *, device: torch.device) -> Inputs:
        """A multi-shot batch, as generate() feeds the DiT: each shot VAE-encoded on its own, the global and the
        shots' captions in one context with the layout that tells each shot's tokens which captions to read."""
        frames = list(batch["shot_frames"])
        vae = self.encoders.vae
        latents = encode_shots(vae, video, frames).float()
        plans = [ShotPlan(global_caption=caption, shots=tuple(Shot(caption=c) for c in shot_captions))
                 for caption, shot_captions in zip(batch["prompt"], batch["shot_prompts"], strict=True)]
        context, text_shots = shot_context(self.encoders.text_encoder, plans, text_len=self.dit.config.text_len,
                                           device=device)
        layout = shot_layout(latent_frames(frames, temporal_compression=vae.temporal_compression), text_shots)
        return Inputs(latents, context, shots=layout)

    def encode_references(self, refs: torch.Tensor, present: torch.Tensor) -> list[torch.Tensor]:
        """refs [B, R, 3, f, H, W] in [-1, 1] -> R latents [B, C, f', h, w], each reference encoded on its own (a
        clip is causal in the VAE: 1 + (f - 1) / 4 latent frames); an absent (dropped or padding) reference is a
        zero latent, the references-free branch of the guidance."""
        return _encode_slots(self.encoders.vae.encode, refs, present)

    def frame_mask(self, inputs: Inputs, first_frame: torch.Tensor | None) -> torch.Tensor | None:
        """Latent frames in the loss ([T] or per sample [B, T]): the given frames are left out, i.e. frame 0 of
        TI2V samples trained image-to-video (clean in x_t), and as a policy (flow.exclude_conditioning_frames)
        frame 0 (and the last for FLF2V) of I2V models, whose given frames arrive through y."""
        frames = inputs.latents.shape[2]
        model_type = self.dit.config.model_type
        if model_type == "ti2v":
            if first_frame is None:
                return None
            mask = torch.ones(len(first_frame), frames, dtype=torch.bool, device=inputs.latents.device)
            mask[:, 0] = ~first_frame
            return mask
        given = {"i2v": (0,), "flf2v": (0, -1)}.get(model_type, ())
        if not (given and self.cfg.flow.exclude_conditioning_frames):
            return None
        return conditioning_frame_mask(frames, given).to(inputs.latents.device)

    def loss(self, inputs: Inputs, sigma: torch.Tensor, noise: torch.Tensor, *,
             first_frame: torch.Tensor | None = None, audio_sigma: torch.Tensor | None = None,
             audio_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample flow loss [B] (float32): the video's, or for an audio-video model the joint loss
        (flow/joint.py) of both modalities' (see losses)."""
        video, audio = self.losses(inputs, sigma, noise, first_frame=first_frame, audio_sigma=audio_sigma,
                                   audio_noise=audio_noise)
        return self.combine(inputs, video, audio)

    def combine(self, inputs: Inputs, video: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """[B]: the video loss, or video + audio_weight x audio where the clip has sound."""
        if audio is None:
            return video
        return joint_loss(video, audio, has_video=torch.ones_like(inputs.has_audio), has_audio=inputs.has_audio,
                          audio_weight=self.cfg.flow.audio_weight)

    def losses(self, inputs: Inputs, sigma: torch.Tensor, noise: torch.Tensor, *,
               first_frame: torch.Tensor | None = None, audio_sigma: torch.Tensor | None = None,
               audio_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(video loss [B], audio loss [B] or None for a video-only model), float32, unmasked. first_frame [B]
        bool (TI2V): these samples see their clean first latent frame in x_t with timestep 0 on its tokens
        (wan_arch.md §5.2), the image-to-video mode. audio_sigma / audio_noise: the audio's noise level [B] and
        noise (audio-video models)."""
        latents = inputs.latents
        x_t = interpolate(latents, noise, sigma)
        t = to_timestep(sigma)
        # first_frame arrives on the CPU (drawn there), so this test costs no device sync
        any_first = first_frame is not None and bool(first_frame.any())
        first_frame = None if first_frame is None else first_frame.to(latents.device)
        if any_first:
            keep = first_frame[:, None, None, None]
            x_t[:, :, 0] = torch.where(keep, latents[:, :, 0], x_t[:, :, 0])
            _, _, frames, h, w = latents.shape
            p_t, p_h, p_w = self.dit.config.patch_size
            per_frame = (h // p_h) * (w // p_w)  # tokens of latent frame 0 come first
            t = t[:, None].repeat(1, (frames // p_t) * per_frame)
            t[:, :per_frame] = torch.where(first_frame[:, None], 0.0, t[:, :per_frame])
        weighting = self.cfg.flow.weighting
        if not self.twin:
            pred = self.dit(x_t, t, inputs.context, y=inputs.y, clip_fea=inputs.clip_fea, refs=inputs.refs,
                            shots=inputs.shots)
            return per_sample_loss(pred, velocity_target(latents, noise), sigma, weighting=weighting,
                                   frame_mask=self.frame_mask(inputs, first_frame)), None
        audio = inputs.audio
        # a clip without sound: its audio is pure noise (sigma 1, "sound unknown"), so the video tower, which reads
        # the audio through fusion, learns that case from it rather than from made-up silence
        audio_sigma = torch.where(inputs.has_audio, audio_sigma, torch.ones_like(audio_sigma))
        a_t = interpolate(audio, audio_noise, audio_sigma)
        # reference voices ride along clean (timestep 0), and the model predicts nothing for them: no loss
        pred, pred_audio = self.dit(x_t, a_t, t, to_timestep(audio_sigma), inputs.context,
                                    audio_refs=inputs.audio_refs)
        video_loss = per_sample_loss(pred, velocity_target(latents, noise), sigma, weighting=weighting,
                                     frame_mask=self.frame_mask(inputs, first_frame))
        audio_loss = (mse_per_sample(pred_audio, velocity_target(audio, audio_noise))
                      * loss_weight(audio_sigma, weighting).to(audio.device).reshape(-1))
        return video_loss, audio_loss

    # ------------------------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        """Ulysses sequence parallelism (strategy.sequence_parallel = P > 1): the process groups exist once the
        strategy has initialised torch.distributed, before DDP / FSDP wrap the DiT."""
        size = self.cfg.strategy.sequence_parallel
        if size > 1 and self.dit.sequence_parallel is None:
            self.dit.sequence_parallel = sequence_groups(size)

    def configure_model(self) -> None:
        """strategy=fsdp: the DiT is sharded here, once the device mesh exists (Lightning's ModelParallelStrategy
        calls this before the optimizer is built); model.compile: then its blocks are compiled, each in place
        (wan_train.models.dit.compile)."""
        if self.cfg.strategy.name == "fsdp":
            self.trainer.strategy.shard(self.dit)
        if self.cfg.model.compile:
            count = compile_blocks(self.dit, mode=self.cfg.model.compile_mode)
            log.info("model.compile: %d blocks share one compiled block; the first step of each bucket shape "
                     "compiles it (and the first held-out evaluation, without grad)", count)

    def sample_generators(self, batch: dict, batch_idx: int, b: int) -> list[torch.Generator]:
        """One CPU generator per sample of this micro-batch (see the module docstring)."""
        micro = batch_idx % self.trainer.accumulate_grad_batches
        if "key" in batch and "url" in batch:  # the shard's folder and file name: the data may move
            ids = [f"{'/'.join(url.rstrip('/').split('/')[-2:])}:{key}"
                   for url, key in zip(batch["url"], batch["key"], strict=True)]
        else:  # batches built by hand: the position in the global batch
            ids = [f"#{self.global_rank * b + i}" for i in range(b)]
        return [_generator(self.cfg.trainer.seed, self.global_step, micro, sample_id) for sample_id in ids]

    def draw(self, inputs: Inputs, generators: list[torch.Generator]) -> dict:
        """This step's random terms, one sample per generator (CPU): sigma, noise, first_frame (TI2V) and, for an
        audio-video model, audio_sigma and audio_noise, drawn after all of the video's (see the module docstring)."""
        # u -> sigma as SigmaSampler.sample draws it (a uniform float64 through the truncated quantile), one sample
        # at a time: vectorised math may round differently with the batch size, and N ranks x batch B must train
        # exactly like 1 rank x batch N*B
        u_video = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])

        def icdf(u: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.sampler.quantile(v, low=self.range.low, high=self.range.high) for v in u.split(1)])

        out = {"sigma": icdf(u_video),
               "noise": torch.stack([torch.randn(inputs.latents.shape[1:], generator=g) for g in generators]),
               "first_frame": None}
        if self.dit.config.model_type == "ti2v":
            first_frame = torch.cat([torch.rand(1, generator=g) for g in generators])
            out["first_frame"] = first_frame < self.cfg.flow.image_condition_probability
        if self.twin:
            u_audio = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
            out["audio_noise"] = torch.stack([torch.randn(inputs.audio.shape[1:], generator=g) for g in generators])
            _, out["audio_sigma"] = modality_sigmas(u_video, u_audio, mode=self.cfg.flow.audio_sigma, icdf=icdf)
        return out

    def training_step(self, batch, batch_idx):
        inputs = self.encode(batch)
        b = inputs.latents.shape[0]
        draws = self.draw(inputs, self.sample_generators(batch, batch_idx, b))
        first_frame = draws.pop("first_frame")  # stays on the CPU (see losses)
        video_loss, audio_loss = self.losses(inputs, **{k: v.to(self.device) for k, v in draws.items()},
                                             first_frame=first_frame)
        sync = self.trainer.world_size > 1
        loss = self.combine(inputs, video_loss, audio_loss).mean()
        if audio_loss is not None:
            sounding = inputs.has_audio.float()
            self.log("train/loss_video", video_loss.mean(), on_step=True, on_epoch=False, batch_size=b,
                     sync_dist=sync)
            # the mean over the clips with sound (0 when a batch has none)
            self.log("train/loss_audio", (audio_loss * sounding).sum() / sounding.sum().clamp(min=1.0),
                     on_step=True, on_epoch=False, batch_size=b, sync_dist=sync)
        # the logged value is the mean over all ranks' samples (a scalar all-reduce; rank 0's alone would
        # misreport a data-parallel run); the gradient uses this rank's loss, and DDP averages the gradients
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=b, sync_dist=sync)
        # sequence parallel: each rank's gradients are its tokens' share and sum over the group to the sample's
        # gradient, while DDP / FSDP average over every rank: x P makes that the mean over the data groups
        return loss * self.cfg.strategy.sequence_parallel

    @torch.no_grad()
    def held_out_loss(self) -> dict[str, float]:
        """Mean flow loss over the fixed clips x fixed sigma quantiles x fixed noise, and per quantile; the same
        mean for every named extra set."""
        per_quantile, parts = self._set_loss("", self.held_out)
        out = {"val/loss": per_quantile.mean().item()}
        out.update({f"val/loss_q{q}": v.item() for q, v in enumerate(per_quantile)})
        for modality, values in parts.items():  # audio-video: val/loss_video, val/loss_audio (+ per quantile)
            out[f"val/loss_{modality}"] = values.mean().item()
            out.update({f"val/loss_{modality}_q{q}": v.item() for q, v in enumerate(values)})
        for name, batches in self.held_out_sets.items():
            out[f"val/{name}/loss"] = self._set_loss(name, batches)[0].mean().item()
        return out

    def _set_loss(self, name: str, batches: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[quantiles] mean loss over one held-out set (encoded on first use); for an audio-video model also each
        modality's ({"video": [quantiles], "audio": [quantiles]}, the audio's over the clips with sound), both
        modalities at the same quantile, the audio's fixed noise from its own stream (seed + 1)."""
        if name not in self._encoded:
            self._encoded[name] = [self.encode(_to(batch, self.device)) for batch in batches]
        sigmas = held_out_sigmas(self.sampler, self.cfg.flow.held_out_quantiles, self.range).to(self.device)
        was_training = self.dit.training
        self.dit.eval()
        per_quantile = torch.zeros(len(sigmas), device=self.device)
        video, audio = torch.zeros_like(per_quantile), torch.zeros_like(per_quantile)
        sounding = torch.zeros((), device=self.device)
        seed = self.cfg.flow.held_out_seed
        for i, inputs in enumerate(self._encoded[name]):
            noise = held_out_noise(inputs.latents.shape, seed=seed, index=i).to(self.device)
            b = inputs.latents.shape[0]
            extra = {}
            if self.twin:
                extra["audio_noise"] = held_out_noise(inputs.audio.shape, seed=seed + 1, index=i).to(self.device)
                sounding += inputs.has_audio.float().sum() / b
            for q, sigma in enumerate(sigmas):
                sigma_b = sigma.expand(b)
                if self.twin:
                    extra["audio_sigma"] = sigma_b
                video_loss, audio_loss = self.losses(inputs, sigma_b, noise, **extra)
                per_quantile[q] += self.combine(inputs, video_loss, audio_loss).mean()
                if self.twin:
                    video[q] += video_loss.mean()
                    audio[q] += (audio_loss * inputs.has_audio.float()).mean()
        self.dit.train(was_training)
        reshard(self.dit)
        count = max(len(self._encoded[name]), 1)
        parts = {"video": video / count, "audio": audio / sounding.clamp(min=1.0)} if self.twin else {}
        return per_quantile / count, parts

    def trained_keys(self) -> set[str]:
        return {f"dit.{n}" for n, p in self.dit.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.lora:
            trained = self.trained_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
        # the step's own draws are seeded by (seed, step, rank); the global generators are saved too so that
        # anything else random (user callbacks, dropout in a subclass) also continues exactly
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": _numpy_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.lora and "state_dict" in checkpoint:  # (strategy=fsdp loads and checks the weights itself)
            found, trained = set(checkpoint["state_dict"]), self.trained_keys()
            if found != trained:
                missing, unexpected = sorted(trained - found), sorted(found - trained)
                raise CheckpointError(f"the checkpoint's adapter does not match lora.* of this run (target, rank, "
                                      f"dora): missing {missing[:5]}, unexpected {unexpected[:5]}")
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def configure_optimizers(self):
        strategy = self.cfg.strategy
        return build_optimizer(self.cfg.optim, self.dit, max_steps=self.cfg.trainer.max_steps,
                               cpu_offload=strategy.name == "deepspeed" and strategy.offload_optimizer)


def _encode_slots(encode, refs: torch.Tensor, present: torch.Tensor) -> list[torch.Tensor]:
    """Each slot of refs [B, R, ...] encoded on its own -> R float32 latents, zero where present [B, R] is False."""
    latents = []
    for slot in range(refs.shape[1]):
        z = encode(refs[:, slot]).float()
        keep = present[:, slot].view(-1, *([1] * (z.ndim - 1)))
        latents.append(torch.where(keep, z, torch.zeros_like(z)))
    return latents


def _float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.float()


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)  # loadable weights_only


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _generator(*parts) -> torch.Generator:
    """A CPU generator seeded by sha256 of the parts (str hashes differ between processes; this does not)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
