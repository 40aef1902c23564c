"""Fréchet Video Distance (Unterthiner et al. 2018, arXiv 1812.01717) with its protocol recorded beside every number.

FVD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) over I3D features ([N, 400] time-averaged Kinetics
logits, `eval.i3d`) of N real and N generated clips. Numbers are only comparable under the same protocol (weights
file, clip length and stride, resize, feature layer, covariance normaliser: reference/eval.md §1.6), so the
`Protocol` travels with every result and keys the cached real-set statistics.

Streaming is torchmetrics' FrechetInceptionDistance with our I3D as the custom extractor: float64 sums of x and
x x^T per side, reduced with "sum" across DDP ranks, so no video and no feature matrix is ever held.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torchmetrics.image.fid import FrechetInceptionDistance

from eval.i3d import MIN_FRAMES, NUM_CLASSES, RESOLUTION, I3DFeatures
from wan_train.fileio.durable import write_bytes

log = logging.getLogger(__name__)

FEATURE = "logits400_time_mean"  # TF reference tensor RGB/inception_i3d/Mean:0
RESIZE = "direct_bilinear"  # every frame straight to 224x224, no crop (TF reference, cd-fvd)
# "biased" = 1/N (StyleGAN-V, whose tables we match by default); "unbiased" = 1/(N-1) (torchmetrics, np.cov)
COVARIANCES = ("biased", "unbiased")


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)) in float64; mu [d], sigma [d, d].

    Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, as torchmetrics'
    (private) `_compute_fid` does. Those eigenvalues are real and >= 0 in exact arithmetic; rounding leaves
    tiny negative or complex ones, whose complex square root has ~0 real part: keeping the real part is the
    same treatment as the references' `np.real(scipy.linalg.sqrtm(S1 @ S2))`.
    """
    # on the CPU: a 400 x 400 eigenproblem takes milliseconds, and cached real stats may sit on another device
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(a).to("cpu", torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance needs mu [d] and sigma [d, d] with one d; got mu "
                         f"{tuple(mu1.shape)}, {tuple(mu2.shape)} and sigma {tuple(sigma1.shape)}, "
                         f"{tuple(sigma2.shape)}")
    trace_sqrt = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return distance.item()


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Everything that changes an FVD number besides the videos; recorded with each result (`as_dict`).

    clips: clips per set (2048 in StyleGAN-V's fvd2048_16f); frames/stride: each clip takes `frames` frames
    `stride` apart (stride 8 = StyleGAN-V's subsample8f); resolution: pixels per side fed to I3D.
    """

    weights_file: str
    weights_sha256: str
    weights_layout: str
    clips: int = 2048
    frames: int = 16
    stride: int = 1
    resolution: int = RESOLUTION
    resize: str = RESIZE
    feature: str = FEATURE
    covariance: str = "biased"

    def __post_init__(self):
        fixed = {"resolution": RESOLUTION, "resize": RESIZE, "feature": FEATURE}
        for key, allowed in fixed.items():
            if getattr(self, key) != allowed:
                raise ValueError(f"Protocol.{key}={getattr(self, key)!r}; only {allowed!r} is implemented")
        if self.covariance not in COVARIANCES:
            raise ValueError(f"Protocol.covariance={self.covariance!r}; allowed: {COVARIANCES}")
        for key, least in (("clips", 2), ("frames", MIN_FRAMES), ("stride", 1)):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < least:
                raise ValueError(f"Protocol.{key}={getattr(self, key)!r}; must be an int >= {least}")

    @classmethod
    def for_network(cls, network: I3DFeatures, **fields) -> Protocol:
        """The protocol of `network`'s weight file, with the other fields as given (or their defaults)."""
        return cls(weights_file=network.weights_file, weights_sha256=network.weights_sha256,
                   weights_layout=network.layout, **fields)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> dict:
        """What must match for two statistics to be comparable: all but where the weight file happens to lie."""
        return {k: v for k, v in self.as_dict().items() if k != "weights_file"}


def clips_from_video(video: torch.Tensor, *, frames: int = 16, stride: int = 1) -> torch.Tensor:
    """[3, F, H, W] -> [N, 3, frames, H, W]: non-overlapping windows of `frames * stride` frames from frame 0, each
    keeping every `stride`-th frame. N = 0 (an empty batch the caller skips and counts) when F is too short,
    as StyleGAN-V discards short videos."""
    if video.ndim != 4:
        raise ValueError(f"clips_from_video expects a video [C, F, H, W], got {tuple(video.shape)}")
    if frames < 1 or stride < 1:
        raise ValueError(f"clips_from_video: frames={frames} and stride={stride} must be >= 1")
    span, last = frames * stride, (frames - 1) * stride + 1  # window length; frames the last window needs
    n = (video.shape[1] - last) // span + 1 if video.shape[1] >= last else 0
    starts = torch.arange(n) * span
    index = (starts[:, None] + torch.arange(frames) * stride).flatten()
    clips = video.index_select(1, index.to(video.device))  # [C, N * frames, H, W]
    return clips.unflatten(1, (n, frames)).transpose(0, 1)


@dataclasses.dataclass(frozen=True)
class RealStats:
    """Real-set statistics keyed by (data fingerprint, protocol): mu [400], sigma [400, 400] float64 (sigma uses
    the protocol's covariance normaliser), count clips. Saved as safetensors with the key as JSON metadata."""

    mu: torch.Tensor
    sigma: torch.Tensor
    count: int
    fingerprint: str
    protocol: Protocol

    @staticmethod
    def cache_path(directory: str | Path, *, fingerprint: str, protocol: Protocol) -> Path:
        """A file name from the key, so a changed dataset or protocol never reads a stale file."""
        key = json.dumps({"fingerprint": fingerprint, "protocol": protocol.key()}, sort_keys=True)
        return Path(directory) / f"fvd_real_{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"

    def save(self, path: str | Path) -> Path:
        """Write atomically and durably (temp file beside `path`, fsynced, renamed): a killed run never leaves half
        a cache."""
        path = Path(path)
        tensors = {"mu": self.mu.double().contiguous().cpu(), "sigma": self.sigma.double().contiguous().cpu(),
                   "count": torch.tensor([self.count], dtype=torch.int64)}
        meta = {"fingerprint": self.fingerprint, "protocol": json.dumps(self.protocol.as_dict(), sort_keys=True)}
        return write_bytes(path, safetensors_bytes(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, *, protocol: Protocol, fingerprint: str | None = None) -> RealStats:
        """Read `path`, refusing it unless its protocol (and fingerprint, when given) match."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FVD real statistics not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (the handle is not iterable)
            stored = Protocol(**json.loads(meta["protocol"]))
            stats = cls(tensors["mu"], tensors["sigma"], int(tensors["count"][0]), meta["fingerprint"], stored)
        except Exception as err:  # safetensors' own error type is not an OSError
            raise ValueError(f"{path}: not an FVD real-statistics file ({type(err).__name__}: {err})") from err
        differ = {k: (v, protocol.key()[k]) for k, v in stored.key().items() if v != protocol.key()[k]}
        if differ:
            raise ValueError(f"{path}: real statistics were computed under another protocol; "
                             f"(stored, wanted) per field: {differ}")
        if fingerprint is not None and fingerprint != stats.fingerprint:
            raise ValueError(f"{path}: real statistics are of data {stats.fingerprint!r}, not {fingerprint!r}")
        return stats


class FVD(FrechetInceptionDistance):
    """Streaming FVD: `update(clips, real=...)` in any batches (on any device, under DDP), `compute() -> float`,
    `result() -> dict` with the protocol. Real statistics may come from a `RealStats` file instead of clips.

    Clips are [B, 3, protocol.frames, H, W] in [-1, 1] (e.g. from `clips_from_video`).
    """

    def __init__(self, network: I3DFeatures, *, protocol: Protocol, real_stats: RealStats | None = None,
                 **metric_kwargs):
        if network.weights_sha256 != protocol.weights_sha256:
            raise ValueError(f"FVD: network weights sha256 {network.weights_sha256[:12]!r} differ from the "
                             f"protocol's {protocol.weights_sha256[:12]!r} ({protocol.weights_file})")
        if real_stats is not None and real_stats.protocol.key() != protocol.key():
            raise ValueError(f"FVD: real statistics of {real_stats.fingerprint!r} were computed under another "
                             f"protocol: {real_stats.protocol.key()} vs {protocol.key()}")
        super().__init__(feature=network, normalize=False, **metric_kwargs)
        self.protocol, self.real_stats = protocol, real_stats

    def update(self, videos: torch.Tensor, real: bool) -> None:
        if videos.ndim != 5 or videos.shape[1] != 3 or videos.shape[2] != self.protocol.frames:
            raise ValueError(f"FVD.update expects clips [B, 3, {self.protocol.frames}, H, W] (protocol.frames), "
                             f"got {tuple(videos.shape)}")
        if real and self.real_stats is not None:
            raise ValueError(f"FVD.update(real=True): the real statistics already come from "
                             f"{self.real_stats.fingerprint!r}")
        super().update(videos, real)

    def compute(self) -> float:
        if self.real_stats is None:
            mu_r, sigma_r, _ = self._moments("real")
        else:
            mu_r, sigma_r = self.real_stats.mu, self.real_stats.sigma
        mu_g, sigma_g, _ = self._moments("fake")
        return frechet_distance(mu_r, sigma_r, mu_g, sigma_g)

    def result(self) -> dict:
        """The number with what it was measured on: {"fvd", "n_real", "n_fake", "real_fingerprint", "protocol"}."""
        value = self.compute()
        with self.sync_context(dist_sync_fn=self.dist_sync_fn):
            n_fake = int(self.fake_features_num_samples)
            n_real = self.real_stats.count if self.real_stats else int(self.real_features_num_samples)
        return {"fvd": value, "n_real": n_real, "n_fake": n_fake,
                "real_fingerprint": self.real_stats.fingerprint if self.real_stats else None,
                "protocol": self.protocol.as_dict()}

    def real_statistics(self, *, fingerprint: str) -> RealStats:
        """The real clips seen so far as a `RealStats` (gathered across ranks), to `save` for later runs."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn):
            mu, sigma, n = self._moments("real")
        return RealStats(mu.cpu(), sigma.cpu(), n, fingerprint, self.protocol)

    def _moments(self, side: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(mu [d], sigma [d, d], n) of one side from the float64 sums; sigma per protocol.covariance."""
        n = int(getattr(self, f"{side}_features_num_samples"))
        if n < 2:
            raise ValueError(f"FVD needs at least 2 {side} clips, got {n}")
        if n < NUM_CLASSES:
            log.warning("FVD: %d %s clips < %d feature dims: the covariance is rank-deficient and the number is "
                        "not comparable to published ones", n, side, NUM_CLASSES)
        elif n != self.protocol.clips:
            log.warning("FVD: %d %s clips, protocol says %d", n, side, self.protocol.clips)
        total = getattr(self, f"{side}_features_sum")  # [d] float64
        mu = total / n
        scatter = getattr(self, f"{side}_features_cov_sum") - n * torch.outer(mu, mu)  # sum (x - mu)(x - mu)^T
        sigma = scatter / (n if self.protocol.covariance == "biased" else n - 1)
        return mu, sigma, n
