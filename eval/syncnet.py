"""SyncNet (Chung & Zisserman, "Out of time: automated lip sync in the wild", ACCV 2016 workshops) as
joonson/syncnet_python builds it (`SyncNetModel.py`, class `S`) and its public `syncnet_v2.model` weights, and the
lip-sync scores of Wav2Lip's evaluation (Prajwal et al. 2020; Rudrabha/Wav2Lip `evaluation/scores_LSE/`):

- Lip stream: 5 consecutive face-crop frames, 3 channels in BGR order, 0-255 floats (cv2 images as they are, no
  mean or scaling), 224 x 224 -> Conv3d over the 5 frames and 2-D convolutions -> 512 -> MLP -> 1024.
- Audio stream: 13 MFCC (eval.mfcc, python_speech_features' defaults on the int16 samples) x 20 steps of 10 ms,
  i.e. the 0.2 s the 5 frames span at 25 fps -> 2-D convolutions -> 512 -> MLP -> 1024.
- Video frame i pairs with the MFCC steps 4i .. 4i + 19 (100 Hz / 25 fps), for i < min(frames, samples // 640) - 5.
- For each lag d in -vshift..vshift (vshift 15 in Wav2Lip's scripts) the Euclidean distance between the video
  feature of window i and the audio feature of window i + d (a zero vector where i + d is outside the clip, as
  syncnet_python pads), averaged over i. **LSE-D** = the smallest mean distance (lower is better), **LSE-C** = the
  median over lags minus that minimum (higher is better). The offset is the lag of the minimum in video frames at
  25 fps, **positive = the sound is late** (as eval.sync): syncnet_python prints the opposite sign (vshift - argmin).

What we do to a generated clip first (there is no face detector here): **the clip is taken to be a talking-head
crop**, e.g. the user's own face/lip crops or a generation framed on one face. Each frame's centred square is
resized (bilinear, as cv2.resize) to 224 x 224 — syncnet_python's pipeline would cut the S3FD face box instead, so
on a wider shot the numbers are not comparable with published ones. Frames are re-timed to 25 fps (the frame on
screen at each 1/25 s), the sound resampled to 16 kHz if needed and scaled to int16 (x 32767, as our .wav files
store it). As in syncnet_python, lags reaching past the clip's ends compare with zero vectors, so clips not much
longer than 2 x vshift + 5 frames (1.4 s) score mostly against the padding (a warning says so).

The weight file is read only through load_pickled (weights only: a pickle that would run code is refused).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eval.av_signals import resample
from eval.mfcc import mfcc
from wan_train.models.checkpoint.pickles import load_pickled

log = logging.getLogger(__name__)

FPS = 25  # SyncNet's video rate
SAMPLE_RATE = 16000  # and its audio rate
SIZE = 224  # face crop side, pixels
WINDOW = 5  # video frames per window (0.2 s)
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
MFCC_STEPS = 20  # MFCC steps per window
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
VSHIFT = 15  # lags searched either way, frames (Wav2Lip's evaluation)
EMBEDDING = 1024


def _conv_block(conv: nn.Module, channels: int, norm=nn.BatchNorm2d) -> list[nn.Module]:
    return [conv, norm(channels), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """syncnet_python's `S`: the module names and indices are its own, so syncnet_v2.model loads key for key.
    forward_lip: [N, 3, 5, 224, 224] (BGR, 0-255) -> [N, 1024]; forward_aud: [N, 1, 13, 20] MFCC -> [N, 1024]."""

    def __init__(self, embedding: int = EMBEDDING):
        super().__init__()
        conv2, conv3, bn3 = nn.Conv2d, nn.Conv3d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(  # 13 x 20 -> 13 x 20 -> 11 x 9 -> 5 x 4 -> 1 x 1
            *_conv_block(conv2(1, 64, 3, padding=1), 64), nn.MaxPool2d(1, 1),
            *_conv_block(conv2(64, 192, 3, padding=1), 192), nn.MaxPool2d(3, stride=(1, 2)),
            *_conv_block(conv2(192, 384, 3, padding=1), 384),
            *_conv_block(conv2(384, 256, 3, padding=1), 256),
            *_conv_block(conv2(256, 256, 3, padding=1), 256), nn.MaxPool2d(3, stride=2),
            *_conv_block(conv2(256, 512, (5, 4)), 512))
        self.netfcaud = _head(embedding)
        self.netfclip = _head(embedding)
        self.netcnnlip = nn.Sequential(  # 5 x 224 -> 1 x 109 -> 54 -> 26 -> 13 -> 13 -> 13 -> 6 -> 1
            *_conv_block(conv3(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, bn3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_block(conv3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, bn3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
            *_conv_block(conv3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            *_conv_block(conv3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            *_conv_block(conv3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_block(conv3(256, 512, (1, 6, 6)), 512, bn3))

    def forward_aud(self, mfcc_N1CT: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc_N1CT).flatten(1))

    def forward_lip(self, frames_N3THW: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(frames_N3THW).flatten(1))


def _head(embedding: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))


@dataclass(frozen=True)
class LoadedSyncNet:
    net: SyncNet
    file: str
    sha256: str


def load_syncnet(path: str | Path) -> LoadedSyncNet:
    """syncnet_v2.model (a pickled state dict of `S`, as syncnet_python's loadParameters copies it key by key;
    *.num_batches_tracked may be absent, as in files saved before torch 0.4.1)
    in eval mode on the CPU. A file that is not one: a ValueError naming it, on one line."""
    path = Path(path)
    state = load_pickled(path)  # a CheckpointError (a ValueError) naming the file
    net = SyncNet()
    expected = net.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a SyncNet weight file (syncnet_v2.model): expected a state dict of tensors, "
                         f"got {type(state).__name__}")
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: not a SyncNet weight file (syncnet_v2.model): missing {_few(missing)}, "
                         f"unexpected {_few(unexpected)}, wrong shape {_few(wrong)}")
    net.load_state_dict({**expected, **state})
    return LoadedSyncNet(net.eval(), str(path), hashlib.sha256(path.read_bytes()).hexdigest())


def _few(keys: list[str], n: int = 4) -> str:
    return f"{len(keys)} {keys[:n]}" + (" ..." if len(keys) > n else "")


def face_frames(video: torch.Tensor, *, fps: float) -> torch.Tensor:
    """video [3, F, H, W] RGB in [-1, 1] at `fps` -> float [3, F', 224, 224] BGR in 0..255 (whole numbers) at
    25 fps: the frame on screen at each i / 25 s, its centred square, resized bilinearly."""
    frames = math.floor(video.shape[1] * FPS / fps + 1e-9)
    index = torch.floor(torch.arange(frames, dtype=torch.float64) * fps / FPS + 1e-9).long()
    height, width = video.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = video[:, index, top:top + side, left:left + side].float()
    pixels = ((square.clamp(-1, 1) + 1) * 127.5).round()  # the 8-bit frames syncnet_python decodes
    resized = F.interpolate(pixels.transpose(0, 1), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).flip(1).transpose(0, 1)  # [3, F', 224, 224], RGB -> BGR


def pcm16(audio: torch.Tensor, *, sample_rate: int) -> torch.Tensor:
    """audio [T] in [-1, 1] at `sample_rate` -> float64 [T'] int16 values at 16 kHz."""
    audio = resample(audio.double(), rate=sample_rate, to=SAMPLE_RATE)
    return (audio.clamp(-1, 1) * 32767).round()


@dataclass(frozen=True)
class LSE:
    lse_d: float  # the smallest mean distance over lags (lower: better sync)
    lse_c: float  # median minus smallest mean distance (higher: more confident)
    offset: int  # lag of the smallest distance, video frames at 25 fps; positive: the sound is late
    distances: torch.Tensor  # float [2 * vshift + 1]: mean distance per lag -vshift..vshift


def lse_from_features(video_ND: torch.Tensor, audio_ND: torch.Tensor, *, vshift: int = VSHIFT) -> LSE:
    """LSE-D / LSE-C / offset from per-window features (syncnet_python's calc_pdist and evaluate): lag d compares
    video window i with audio window i + d, zeros outside the clip."""
    windows = video_ND.shape[0]
    padded = F.pad(audio_ND, (0, 0, vshift, vshift))
    lags = 2 * vshift + 1
    distances = torch.stack([F.pairwise_distance(video_ND[i:i + 1].expand(lags, -1), padded[i:i + lags])
                             for i in range(windows)]).mean(0)
    smallest, where = distances.min(0)
    return LSE(float(smallest), float(distances.median() - smallest), int(where) - vshift, distances)


@torch.no_grad()
def syncnet_scores(net: SyncNet, video: torch.Tensor, audio: torch.Tensor, *, fps: float, sample_rate: int,
                   vshift: int = VSHIFT, batch_size: int = 20) -> LSE:
    """LSE-D, LSE-C and the offset of one talking-head clip [3, F, H, W] in [-1, 1] and its sound [T] in [-1, 1]
    (module docstring). Needs at least 6 frames (0.24 s) of both at 25 fps."""
    frames = face_frames(video, fps=fps)
    samples = pcm16(audio, sample_rate=sample_rate)
    usable = min(frames.shape[1], samples.numel() // SAMPLES_PER_FRAME)
    windows = usable - WINDOW
    if windows < 1:
        raise ValueError(f"SyncNet needs at least {WINDOW + 1} frames ({(WINDOW + 1) / FPS:.2f} s) of picture and "
                         f"sound at 25 fps; this clip has {frames.shape[1]} frames and "
                         f"{samples.numel() / SAMPLE_RATE:.2f} s of sound")
    if windows < 2 * vshift + 1:
        log.warning("SyncNet: %d windows (%.2f s) against lags of +-%d: most lags compare with the zero padding past "
                    "the clip's ends", windows, usable / FPS, vshift)
    cepstra = mfcc(samples, sample_rate=SAMPLE_RATE).T.float()  # [13, steps]
    device = next(net.parameters()).device
    video_features, audio_features = [], []
    for start in range(0, windows, batch_size):
        batch = range(start, min(windows, start + batch_size))
        lips = torch.stack([frames[:, i:i + WINDOW] for i in batch]).to(device)
        sound = torch.stack([cepstra[None, :, MFCC_PER_FRAME * i:MFCC_PER_FRAME * i + MFCC_STEPS] for i in batch])
        video_features.append(net.forward_lip(lips).float().cpu())
        audio_features.append(net.forward_aud(sound.to(device)).float().cpu())
    return lse_from_features(torch.cat(video_features), torch.cat(audio_features), vshift=vshift)
