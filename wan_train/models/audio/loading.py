"""``load_audio_autoencoder``: Ovi's audio autoencoder from its two MMAudio files.

  - ``MMAudio/ext_weights/v1-16.pth``: the VAE's own state dict, flat and unprefixed (``data_mean``, ``data_std``
    [1, 80, 1], ``encoder.*``, ``decoder.*``), as ``AutoEncoderModule`` loads it into ``VAE_16k``. Its conv weights
    are raw: they are normalised here exactly as MMAudio's ``remove_weight_norm`` does (mp_layers.mp_weight).
  - ``MMAudio/ext_weights/best_netG.pt``: BigVGAN's training checkpoint, a dict whose ``generator`` entry is the
    vocoder's state dict with every conv stored as a weight-norm pair (``<conv>.weight_g`` / ``.weight_v``, or
    torch's newer ``<conv>.parametrizations.weight.original0`` / ``original1``), fused here as torch's weight_norm
    computes it (dim 0). It also holds the anti-aliasing filters (``...upsample.filter``, ``...lowpass.filter``),
    which are used as read, as MMAudio does.

Both are read weights-only (pickles.load_pickled: no code runs). The widths (VAE hidden width, latent channels,
mel bins, vocoder channels) are read from the tensor shapes; the block structure comes from the named config.
Every key and shape is checked before the model (built on the meta device) takes the tensors; a mismatch is one
CheckpointError line naming the file and the keys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from wan_train.models.audio.autoencoder import AudioAutoencoder
from wan_train.models.audio.config import AudioAutoencoderConfig, get_audio_config
from wan_train.models.audio.mel import LogMel
from wan_train.models.audio.mel_space import MelSpace
from wan_train.models.audio.mp_layers import mp_weight
from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.pickles import load_pickled
from wan_train.models.checkpoint.state_dict import read_state_dict

# (g, v) suffixes of a weight-norm pair: the legacy torch.nn.utils.weight_norm names and the parametrization's
WEIGHT_NORM_PAIRS = ((".weight_g", ".weight_v"),
                     (".parametrizations.weight.original0", ".parametrizations.weight.original1"))
GENERATOR = "generator"
MAX_LISTED = 3


def load_audio_autoencoder(*, vae: str | Path, vocoder: str | Path,
                           config: str | AudioAutoencoderConfig = "mmaudio-16k", dtype: torch.dtype | None = None,
                           device: torch.device | str | None = None) -> AudioAutoencoder:
    """The audio autoencoder from v1-16.pth (``vae``) and best_netG.pt (``vocoder``); frozen, in eval mode.

    config: the block structure (a name in AUDIO_CONFIGS, or a config); widths come from the files. dtype: cast
    the weights after normalising / fusing them in float32 (None keeps the stored dtype: float32 in Ovi's files).
    device: where the weights go (default CPU)."""
    base = get_audio_config(config) if isinstance(config, str) else config
    vae_path, vocoder_path = Path(vae), Path(vocoder)
    vae_tensors = read_state_dict(vae_path)
    vocoder_tensors = fuse_weight_norm(read_generator(vocoder_path), where=vocoder_path)
    cfg = config_from_shapes(base, vae_tensors, vae_path, vocoder_tensors, vocoder_path)
    with torch.device("meta"):
        model = AudioAutoencoder(cfg)
    model.mel = LogMel(cfg.mel)  # its buffers are computed, not read
    check_keys(model.vae, vae_tensors, where=vae_path,
               what=f"an MMAudio mel VAE (hidden width {cfg.vae.hidden_dim}, {cfg.vae.z_dim} latent channels)")
    check_keys(model.vocoder, vocoder_tensors, where=vocoder_path,
               what=f"a BigVGAN v1 generator ({cfg.vocoder.channels} channels)")
    vae_tensors = {k: mp_weight(v) if is_mp_conv_weight(k) else v for k, v in vae_tensors.items()}
    assign(model.vae, vae_tensors, dtype=dtype, device=device)
    assign(model.vocoder, vocoder_tensors, dtype=dtype, device=device)
    model.mel.to(device)
    return model.eval().requires_grad_(False)


def is_mp_conv_weight(key: str) -> bool:
    """Every weight of the VAE's encoder and decoder belongs to an MPConv1d (learnable_gain is a scalar)."""
    return key.startswith(("encoder.", "decoder.")) and key.endswith(".weight")


def read_generator(path: Path) -> dict[str, torch.Tensor]:
    """The ``generator`` state dict of a BigVGAN training checkpoint."""
    checkpoint = load_pickled(path)
    if not isinstance(checkpoint, dict) or GENERATOR not in checkpoint:
        found = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: expected a BigVGAN checkpoint (a dict with key {GENERATOR!r}), found {found}")
    state = checkpoint[GENERATOR]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: {GENERATOR!r} is not a state dict (a flat dict of tensors)")
    return state


def fuse_weight_norm(state: dict[str, torch.Tensor], *, where: str | Path) -> dict[str, torch.Tensor]:
    """Each (g, v) pair becomes ``<conv>.weight`` = g v / ||v||, the norm over all dims but 0, computed in float32
    (torch._weight_norm, what weight_norm's parametrization and its removal compute); other keys pass through."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, str]] = {}  # conv -> {"g": key, "v": key} as found
    names: dict[str, tuple[str, str]] = {}  # conv -> the (g, v) keys its naming style calls for
    for key, tensor in state.items():
        for g_suffix, v_suffix in WEIGHT_NORM_PAIRS:
            if key.endswith((g_suffix, v_suffix)):
                role, suffix = ("g", g_suffix) if key.endswith(g_suffix) else ("v", v_suffix)
                conv = key[:-len(suffix)]
                pairs.setdefault(conv, {})[role] = key
                names[conv] = (conv + g_suffix, conv + v_suffix)
                break
        else:
            out[key] = tensor
    for conv, keys in pairs.items():
        if len(keys) < 2:
            missing = names[conv][0] if "g" not in keys else names[conv][1]
            raise CheckpointError(f"{where}: missing key {missing} (the other half of the weight-norm pair "
                                  f"{next(iter(keys.values()))})")
        g, v = state[keys["g"]], state[keys["v"]]
        if tuple(g.shape) != (v.shape[0],) + (1,) * (v.ndim - 1):
            raise CheckpointError(f"{where}: key {keys['g']} has shape {list(g.shape)}; expected "
                                  f"{[v.shape[0]] + [1] * (v.ndim - 1)} for {keys['v']} {list(v.shape)}")
        if f"{conv}.weight" in out:
            raise CheckpointError(f"{where}: key {conv}.weight appears both plain and as a weight-norm pair")
        out[f"{conv}.weight"] = torch._weight_norm(v.float(), g.float(), 0).to(v.dtype)
    return out


def config_from_shapes(base: AudioAutoencoderConfig, vae: dict[str, torch.Tensor], vae_path: Path,
                       vocoder: dict[str, torch.Tensor], vocoder_path: Path) -> AudioAutoencoderConfig:
    """``base`` with the widths of the two files: VAE hidden width, latent channels and mel bins from
    encoder.conv_in [hidden, M, 3] and decoder.conv_in [hidden * ch_mult[-1], Z, 3]; vocoder channels from
    conv_pre [C, M, 7]; the data statistics from the VAE file (used as read; shapes are checked afterwards)."""
    enc_in = shape_of(vae, "encoder.conv_in.weight", vae_path, ndim=3)
    dec_in = shape_of(vae, "decoder.conv_in.weight", vae_path, ndim=3)
    pre = shape_of(vocoder, "conv_pre.weight", vocoder_path, ndim=3)
    hidden, mel_bins, z_dim = enc_in[0], enc_in[1], dec_in[1]

    def stats(name: str, fill: float) -> tuple[float, ...]:
        t = vae.get(name)
        return tuple(t.flatten().tolist()) if t is not None and t.numel() == mel_bins else (fill,) * mel_bins

    try:
        vae_cfg = dataclasses.replace(base.vae, hidden_dim=hidden, mel_bins=mel_bins, z_dim=z_dim,
                                      data_mean=stats("data_mean", 0.0), data_std=stats("data_std", 1.0))
        vocoder_cfg = dataclasses.replace(base.vocoder, channels=pre[0], mel_bins=pre[1])
        return base.replace(vae=vae_cfg, vocoder=vocoder_cfg)
    except ValueError as error:
        raise CheckpointError(f"{vae_path} and {vocoder_path} do not fit together or with the mel front end of "
                              f"config {base.name!r}: {error}") from None


def shape_of(tensors: dict[str, torch.Tensor], key: str, where: Path, *, ndim: int) -> tuple[int, ...]:
    if key not in tensors:
        raise CheckpointError(f"{where}: missing key {key} (found: {sorted(tensors)[:MAX_LISTED]}...)")
    shape = tuple(tensors[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{where}: key {key} has shape {list(shape)}; expected {ndim} dimensions")
    return shape


def check_keys(module: nn.Module, tensors: dict[str, torch.Tensor], *, where: Path, what: str) -> None:
    """One CheckpointError line naming the file and the first few missing, unexpected and misshapen keys."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [f"missing key {k} {list(s)}" for k, s in expected.items() if k not in found]
    problems += [f"unexpected key {k} {list(s)}" for k, s in found.items() if k not in expected]
    problems += [f"key {k} has shape {list(s)}, expected {list(expected[k])}"
                 for k, s in found.items() if k in expected and s != expected[k]]
    if problems:
        more = f" (+{len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise CheckpointError(f"{where}: not {what}: " + "; ".join(problems[:MAX_LISTED]) + more)


def assign(module: nn.Module, tensors: dict[str, torch.Tensor], *, dtype: torch.dtype | None,
           device: torch.device | str | None) -> None:
    """Put checked tensors into a module built on the meta device: parameters frozen, buffers as buffers."""
    for name, tensor in tensors.items():
        cast = dtype if dtype is not None and tensor.is_floating_point() else None
        if cast is not None or device is not None:
            tensor = tensor.to(device=device, dtype=cast, copy=True)
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if attr in owner._buffers:
            setattr(owner, attr, tensor)
        else:
            setattr(owner, attr, nn.Parameter(tensor, requires_grad=False))


AUDIO_FILES = ("v1-16.pth", "best_netG.pt")  # MMAudio's VAE and vocoder
OVI_AUDIO_DIR = Path("MMAudio") / "ext_weights"  # where Ovi's download_weights.py puts them


def load_audio_space(spec: str | Path, *, device: torch.device | str | None = None):
    """The audio latent space named by `spec`: "mel" is the weight-free MelSpace; anything else is a folder holding
    MMAudio's v1-16.pth and best_netG.pt, itself or in its MMAudio/ext_weights (an Ovi checkpoint folder)."""
    if str(spec) == "mel":
        return MelSpace().to(device)
    for folder in (Path(spec), Path(spec) / OVI_AUDIO_DIR):
        if all((folder / name).is_file() for name in AUDIO_FILES):
            vae, vocoder = (folder / name for name in AUDIO_FILES)
            return load_audio_autoencoder(vae=vae, vocoder=vocoder, device=device)
    raise CheckpointError(f"{spec}: not an audio autoencoder: expected 'mel' or a folder with "
                          f"{' and '.join(AUDIO_FILES)} (in it or in its {OVI_AUDIO_DIR})")
