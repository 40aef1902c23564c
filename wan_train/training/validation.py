"""Validation videos during training: every `validation.every_n_steps` (and at the end), the fixed prompts with
fixed seeds go through the shared denoising loop (wan_train.inference.generate) with the fast preset; the videos
land in run_dir/samples/step_NNNNNNN/ (mp4 + preview + settings) and in W&B. `validation.metrics` scores them
(scorers named by Hydra's _target_, e.g. eval.scorers.ClipScore; wan_train never imports eval/): the means are
logged as val/<name>, each video's values go into its settings JSON. An audio-video model samples its videos with
their sound (task t2av): the mp4 carries it as an AAC track, a .wav lies beside it, and W&B shows the mp4."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger

from wan_train.inference import WanModels, fast, generate, official, save_video, with_overrides
from wan_train.inference.av import generate_av
from wan_train.marking import Marker
from wan_train.parallel.fsdp import is_sharded, reshard

log = logging.getLogger(__name__)


class ValidationVideos(L.Callback):
    def __init__(self, cfg, *, run_dir: Path, size: str, boundary: float | None, partner=None, expert=None,
                 marker: Marker | None = None):
        """cfg: the `validation` config; expert / partner: a Wan2.2 A14B expert run samples with the expert it
        trains and its frozen partner (a WanDiT, kept on the CPU between uses), or not at all without one;
        marker: how the videos are marked as AI-generated (None: every layer, this installation's keys)."""
        self.cfg, self.run_dir, self.size, self.boundary = cfg, Path(run_dir), size, boundary
        self.marker = marker
        self.partner, self.expert = partner, expert
        self.settings = with_overrides(fast(official(size)), cfg)
        self.scorers = [instantiate(metric) for metric in cfg.metrics]  # built at start: a bad one fails now
        self.last_step = 0  # the step of the newest videos (a step with accumulated batches samples once)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step != self.last_step and (step % self.cfg.every_n_steps == 0 or step == trainer.max_steps):
            self.sample(trainer, module)

    @torch.no_grad()
    def sample(self, trainer, module) -> list[Path]:
        step = trainer.global_step
        self.last_step = step
        models = self.models(module)
        # rank 0 samples alone, unless FSDP shards the DiT: then every rank takes part in its forward passes (the
        # same prompts and seeds) and rank 0 keeps the videos. Sequence parallelism is off meanwhile
        sharded = is_sharded(module.dit)
        if models is None or not (trainer.is_global_zero or sharded):
            return []
        jobs = self.jobs(models, module)
        was_training = module.dit.training
        module.dit.eval()
        split, module.dit.sequence_parallel = module.dit.sequence_parallel, None
        videos, sounds = [], []
        try:
            for prompts, seed, kwargs in jobs:
                if models.has_audio:
                    out = generate_av(models, prompts, seed=seed, device=module.device, **kwargs)
                    videos += list(out.video)
                    sounds += [(audio, out.sample_rate) for audio in out.audio]
                else:
                    videos += list(generate(models, prompts, seed=seed, device=module.device, **kwargs))
        finally:
            module.dit.train(was_training)
            module.dit.sequence_parallel = split
            reshard(module.dit)
            if self.partner is not None:
                self.partner.to("cpu")
        if not trainer.is_global_zero:
            return []
        folder = self.run_dir / "samples" / f"step_{step:07d}"
        paths = []
        prompts = [p for job in jobs for p in job[0]]
        settings_of = [job[2]["settings"] for job in jobs for _ in job[0]]
        scores = self.score(videos, prompts)
        for i, (prompt, video, settings) in enumerate(zip(prompts, videos, settings_of, strict=True)):
            meta = {"prompt": prompt, "seed": self.cfg.seed + i, "step": step, "settings": dataclasses.asdict(settings),
                    "scores": {name: float(values[i]) for name, values in scores.items()}}
            paths.append(save_video(folder / f"prompt_{i:02d}.mp4", video, fps=settings.fps, metadata=meta,
                                    preview=self.cfg.preview, marker=self.marker,
                                    sound=sounds[i] if sounds else None).video)
        means = {f"val/{name}": float(values.float().mean()) for name, values in scores.items()}
        for logger in trainer.loggers:
            if means:
                logger.log_metrics(means, step=step)
            if isinstance(logger, WandbLogger):
                logger.log_video("samples", videos=[str(p) for p in paths], step=step, caption=prompts)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in means.items()})
        log.info("validation videos of step %d in %s", step, folder)
        return paths

    def score(self, videos: list[torch.Tensor], prompts: list[str]) -> dict[str, torch.Tensor]:
        """{name: [N] values} of every scorer over the N videos (scored one at a time: sizes may differ)."""
        scores: dict[str, list[torch.Tensor]] = {}
        for video, prompt in zip(videos, prompts, strict=True):
            for scorer in self.scorers:
                for name, values in scorer(video[None], [prompt]).items():
                    scores.setdefault(name, []).append(values.reshape(1).float().cpu())
        return {name: torch.cat(values) for name, values in scores.items()}

    def jobs(self, models: WanModels, module) -> list[tuple[list[str], int, dict]]:
        """(prompts, first seed, generate kwargs) per generate call: all prompts at once for text-to-video; for
        image-only models, one call per prompt conditioned on the first (and last) frame of held-out clip i,
        at that clip's size."""
        prompts = list(self.cfg.prompts)
        if models.has_audio:
            return [(prompts, self.cfg.seed, {"settings": self.settings, "task": "t2av"})]
        if "t2v" in models.tasks:
            return [(prompts, self.cfg.seed, {"settings": self.settings, "task": "t2v"})]
        clips = [batch["video"] for batch in module.held_out if "video" in batch]
        if not clips:
            log.warning("validation videos of an image-to-video model need held-out video clips; skipped")
            return []
        task, jobs = models.tasks[0], []
        for i, prompt in enumerate(prompts):
            video = clips[i % len(clips)].to(module.device)
            _, _, frames, height, width = video.shape
            settings = self.settings.replace(width=width, height=height, num_frames=frames)
            jobs.append(([prompt], self.cfg.seed + i, {
                "settings": settings, "task": task, "images": video[:, :, 0],
                "last_images": video[:, :, -1] if task == "flf2v" else None}))
        return jobs

    def models(self, module) -> WanModels | None:
        encoders = module.encoders
        if encoders.vae is None or encoders.text_encoder is None:
            log.warning("validation videos need the VAE and text encoder (model.encoders); skipped")
            return None
        if self.expert is None:
            dits = {None: module.dit}
        elif self.partner is None:
            log.warning("validation videos of one A14B expert need the other (model.checkpoint); skipped")
            return None
        else:
            other = next(e for e in ("high_noise", "low_noise") if e != self.expert)
            dits = {self.expert: module.dit, other: self.partner}
        encoders.to(module.device)
        return WanModels(dits, encoders.vae, encoders.text_encoder, encoders.clip, boundary=self.boundary,
                         size=self.size, audio_vae=encoders.audio)
