"""The LightningModule: thin orchestration of batch -> latents + context -> sigma -> flow objective -> log.

Randomness of a step (sigma, noise) comes from a generator seeded by (seed, step, rank), not from the global
RNG, so a run resumed from a checkpoint draws exactly what the uninterrupted run drew. The held-out loss uses a
fixed set of clips, fixed sigmas (quantiles of the expert's sigma distribution) and fixed noise, so its value
is comparable across steps and runs."""

import random

import lightning as L
import numpy as np
import torch

from wan_train.flow import (SigmaSampler, conditioning_frame_mask, expert_range, held_out_noise, held_out_sigmas,
                            interpolate, per_sample_loss, to_timestep, velocity_target)
from wan_train.models import WanDiT
from wan_train.training.optim import build_optimizer


class FlowMatchingModule(L.LightningModule):
    def __init__(self, cfg, *, dit: WanDiT, encoders, boundary: float | None, held_out: list[dict]):
        super().__init__()
        self.cfg, self.dit, self.encoders = cfg, dit, encoders
        self.sampler = SigmaSampler(**cfg.flow.sampler)
        self.range = expert_range(cfg.expert.name, boundary)
        self.held_out = held_out  # raw batches of one sample each, encoded on first use
        self._held_out_encoded: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # ---------------------------------------------------------------------------------------------- inputs
    @torch.no_grad()
    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents [B, C, T, h, w] float32 and context [B, L, D] of a batch (raw video or cached)."""
        if "latents" in batch:
            return batch["latents"].float(), batch["context"].float()
        self.encoders.to(self.device)
        latents = self.encoders.vae.encode(batch["video"])
        context, lengths = self.encoders.text_encoder.encode(batch["prompt"])
        return latents.float(), context[:, : int(lengths.max())].float()

    def frame_mask(self, latents: torch.Tensor) -> torch.Tensor | None:
        # the given frames: first (i2v, ti2v), first and last (flf2v); excluding them is a policy choice for
        # i2v/flf2v (their frame 0 is noised like the rest; the image arrives through y)
        conditioning = {"i2v": (0,), "ti2v": (0,), "flf2v": (0, -1)}.get(self.dit.config.model_type, ())
        if not (conditioning and self.cfg.flow.exclude_conditioning_frames):
            return None
        return conditioning_frame_mask(latents.shape[2], conditioning).to(latents.device)

    def loss(self, latents, context, sigma, noise) -> torch.Tensor:
        """Per-sample flow loss [B] (float32)."""
        x_t = interpolate(latents, noise, sigma)
        pred = self.dit(x_t, to_timestep(sigma), context)
        return per_sample_loss(pred, velocity_target(latents, noise), sigma, weighting=self.cfg.flow.weighting,
                               frame_mask=self.frame_mask(latents))

    # ------------------------------------------------------------------------------------------- training
    def step_generator(self) -> torch.Generator:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(hash((self.cfg.trainer.seed, self.global_step, self.global_rank)) % 2 ** 63)
        return generator

    def training_step(self, batch, batch_idx):
        latents, context = self.encode(batch)
        generator = self.step_generator()
        b = latents.shape[0]
        sigma = self.sampler.sample(b, generator=generator, low=self.range.low, high=self.range.high)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        loss = self.loss(latents, context, sigma.to(latents.device), noise).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=b)
        return loss

    @torch.no_grad()
    def held_out_loss(self) -> dict[str, float]:
        """Mean flow loss over the fixed clips x fixed sigma quantiles x fixed noise, and per quantile."""
        if self._held_out_encoded is None:
            self._held_out_encoded = [self.encode(_to(batch, self.device)) for batch in self.held_out]
        sigmas = held_out_sigmas(self.sampler, self.cfg.flow.held_out_quantiles, self.range).to(self.device)
        was_training = self.dit.training
        self.dit.eval()
        per_quantile = torch.zeros(len(sigmas), device=self.device)
        for i, (latents, context) in enumerate(self._held_out_encoded):
            noise = held_out_noise(latents.shape, seed=self.cfg.flow.held_out_seed, index=i).to(self.device)
            for q, sigma in enumerate(sigmas):
                per_quantile[q] += self.loss(latents, context, sigma.expand(latents.shape[0]), noise).mean()
        self.dit.train(was_training)
        per_quantile /= max(len(self._held_out_encoded), 1)
        out = {"val/loss": per_quantile.mean().item()}
        out.update({f"val/loss_q{q}": v.item() for q, v in enumerate(per_quantile)})
        return out

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the step's own draws are seeded by (seed, step, rank); the global generators are saved too so that
        # anything else random (user callbacks, dropout in a subclass) also continues exactly
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": _numpy_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def configure_optimizers(self):
        return build_optimizer(self.cfg.optim, self.dit, max_steps=self.cfg.trainer.max_steps)


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)  # loadable weights_only


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
