"""Wan VAE checkpoint layouts: official key names (ours) <-> diffusers ``AutoencoderKLWan``, and the config
read from either (wan_arch.md §2; the diffusers names follow its conversion script).

The official files number the decoder's layers in one flat list (Wan2.1) or per stage (Wan2.2); diffusers
groups them into ``down_blocks`` / ``up_blocks`` with ``resnets`` and a resampler. The mapping is derived from
the structure of the model itself, so it covers every key of every width.
"""

from __future__ import annotations

from torch import nn

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.vae.config import VAE_CONFIGS, VAEConfig
from wan_train.models.vae.layers import Resample, ResidualBlock
from wan_train.models.vae.model import WanVAE

# inside a residual block: official Sequential indices -> diffusers names
_RESIDUAL_LEAVES = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
                    "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
DIFFUSERS_CLASS = "AutoencoderKLWan"


def _stage_pairs(part: str, stages: nn.Sequential, *, residual: bool) -> dict[str, str]:
    """Official -> diffusers module paths for the encoder's downsamples / decoder's upsamples."""
    inner_name = "downsamples" if part == "encoder" else "upsamples"  # the same word names both levels
    official = f"{part}.{inner_name}"
    blocks = f"{part}.{'down_blocks' if part == 'encoder' else 'up_blocks'}"
    resampler = "downsampler" if part == "encoder" else "upsampler"
    pairs = {}
    if residual:  # Wan2.2: one module per stage, its layers in a nested Sequential
        for i, stage in enumerate(stages):
            inner = getattr(stage, inner_name)
            for j, layer in enumerate(inner):
                name = f"resnets.{j}" if isinstance(layer, ResidualBlock) else resampler
                pairs[f"{official}.{i}.{inner_name}.{j}"] = f"{blocks}.{i}.{name}"
    elif part == "encoder":  # Wan2.1 encoder: diffusers keeps the flat list
        pairs.update({f"{official}.{k}": f"{blocks}.{k}" for k in range(len(stages))})
    else:  # Wan2.1 decoder: a new up block after each upsampler
        stage, j = 0, 0
        for k, layer in enumerate(stages):
            if isinstance(layer, Resample):
                pairs[f"{official}.{k}"] = f"{blocks}.{stage}.upsamplers.0"
                stage, j = stage + 1, 0
            else:
                pairs[f"{official}.{k}"] = f"{blocks}.{stage}.resnets.{j}"
                j += 1
    return pairs


def module_pairs(model: WanVAE) -> dict[str, str]:
    pairs = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
    for part in ("encoder", "decoder"):
        coder = getattr(model, part)
        pairs |= {f"{part}.{ours}": f"{part}.{theirs}" for ours, theirs in (
            ("conv1", "conv_in"), ("head.0", "norm_out"), ("head.2", "conv_out"), ("middle.0", "mid_block.resnets.0"),
            ("middle.1", "mid_block.attentions.0"), ("middle.2", "mid_block.resnets.1"))}
        stages = coder.downsamples if part == "encoder" else coder.upsamples
        pairs |= _stage_pairs(part, stages, residual=model.config.residual)
    return pairs


def official_to_diffusers(model: WanVAE) -> dict[str, str]:
    """Every state_dict key of ``model`` (official names) -> its diffusers name."""
    pairs = module_pairs(model)
    residual_blocks = {name for name, m in model.named_modules() if isinstance(m, ResidualBlock)}
    table = {}
    for key in model.state_dict():
        module, leaf = _split(key, pairs)
        if module in residual_blocks:
            leaf = next((new + leaf[len(old):] for old, new in _RESIDUAL_LEAVES.items() if leaf.startswith(old)),
                        leaf)
        table[key] = f"{pairs[module]}.{leaf}"
    return table


def _split(key: str, pairs: dict[str, str]) -> tuple[str, str]:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if module in pairs:
            return module, ".".join(parts[cut:])
    raise KeyError(key)  # every module with parameters is paired above


def detect_layout(keys) -> str:
    keys = set(keys)
    if "encoder.conv_in.weight" in keys:
        return "diffusers"
    if "encoder.conv1.weight" in keys:
        return "official"
    raise CheckpointError("not a Wan VAE state dict: neither encoder.conv1.weight (official) nor "
                          "encoder.conv_in.weight (diffusers) is present")


# per layout: a key only Wan2.2 has, then the keys giving latent channels, encoder width, decoder width
_SHAPE_KEYS = {
    "official": ("encoder.downsamples.0.downsamples.0.residual.0.gamma", "conv2.weight", "encoder.conv1.weight",
                 "decoder.head.2.weight"),
    "diffusers": ("encoder.down_blocks.0.resnets.0.norm1.gamma", "post_quant_conv.weight", "encoder.conv_in.weight",
                  "decoder.conv_out.weight"),
}


def config_from_shapes(shapes: dict[str, tuple[int, ...]], layout: str, where: str) -> VAEConfig:
    """The config of a state dict without a config file: version from its key names, widths and latent
    channels from tensor shapes; the rest is fixed for each version."""
    wan22_key, z_key, enc_key, dec_key = _SHAPE_KEYS[layout]
    version = "wan2.2" if wan22_key in shapes else "wan2.1"
    try:
        z_dim, base, dec_base = shapes[z_key][0], shapes[enc_key][0], shapes[dec_key][1]
    except KeyError as e:
        raise CheckpointError(f"{where}: missing {e.args[0]!r}, which every Wan VAE has ({layout} layout)") from None
    reference = VAE_CONFIGS[version]
    if z_dim != reference.z_dim:
        raise CheckpointError(f"{where}: a {version} VAE has {reference.z_dim} latent channels ({z_key}), "
                              f"this file has {z_dim}")
    return reference.replace(base_dim=base, decoder_base_dim=dec_base)


_DIFFUSERS_FIELDS = {"base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                     "temperal_downsample", "dropout", "latents_mean", "latents_std", "is_residual", "in_channels",
                     "out_channels", "patch_size", "scale_factor_temporal", "scale_factor_spatial", "clip_output"}


def config_from_diffusers(cfg: dict, where: str) -> VAEConfig:
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_FIELDS)
    if unknown:
        raise CheckpointError(f"{where}: unknown AutoencoderKLWan config fields {unknown}")
    if cfg.get("attn_scales"):
        raise CheckpointError(f"{where}: attn_scales={cfg['attn_scales']} (attention outside the middle blocks) "
                              "is not a Wan VAE")
    version = "wan2.2" if cfg.get("is_residual") else "wan2.1"
    reference = VAE_CONFIGS[version]
    # absent fields take AutoencoderKLWan's defaults, which are the Wan2.1 values
    config = VAEConfig(
        version=version, base_dim=cfg.get("base_dim", 96),
        decoder_base_dim=cfg.get("decoder_base_dim") or cfg.get("base_dim", 96), z_dim=cfg.get("z_dim", 16),
        latents_mean=cfg.get("latents_mean", reference.latents_mean),
        latents_std=cfg.get("latents_std", reference.latents_std),
        dim_mult=cfg.get("dim_mult", reference.dim_mult), num_res_blocks=cfg.get("num_res_blocks", 2),
        temporal_downsample=cfg.get("temperal_downsample", reference.temporal_downsample),
        dropout=cfg.get("dropout", 0.0),
    )
    io = cfg.get("in_channels", 3)  # the encoder's input: channels after pixel unshuffle
    if io != config.io_channels or (cfg.get("patch_size") or 1) != config.patch_size:
        raise CheckpointError(f"{where}: is_residual={cfg.get('is_residual')} with in_channels={io} and "
                              f"patch_size={cfg.get('patch_size')} matches neither Wan VAE "
                              "(2.1: 3 channels, no patch; 2.2: residual, 12 channels, patch 2)")
    return config
