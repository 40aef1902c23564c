"""Which known loaders of each export format (formats.py) can read a file holding a given set of modules.

Read from the loaders' code; the diffusers rules are also tested against diffusers itself. `load_lora_weights` is
diffusers' WanPipeline.load_lora_weights:

    peft       PeftModel.from_pretrained: every Linear (injected by module name).
    diffusers  load_lora_weights: every Linear (peft, by the diffusers module name).
    comfyui    ComfyUI's LoraLoaderModelOnly: every weight of the model (its generic key map takes
               `diffusion_model.<param>` and `lora_unet_<param with '_'>` for every weight).
               load_lora_weights: only the Linears inside the blocks. Its converter for `diffusion_model.` keys uses
               `.alpha` only there and raises ValueError on any other module's `.alpha` (which we always write);
               k_img / v_img only when both occur.
    kohya      musubi-tuner's --lora_weight: every weight (merged by name while the DiT loads). ComfyUI: every weight.
               load_lora_weights: exactly the block Linears of blocks 0..N-1, all of them. Its musubi converter
               raises IndexError on a module outside the blocks and KeyError on a missing one (an `attn_qkvo` or
               `self_attn` adapter, one of only some blocks); k_img / v_img in every block or in none.

Outside the blocks, a Wan DiT's Linears are text_embedding.{0,2}, time_embedding.{0,2}, time_projection.1, head.head
and (I2V) img_emb.proj.{1,3}; patch_embedding is a Conv3d, which no LoRA here adapts. Our target presets stay inside
the blocks, so such modules come from imported adapters (e.g. distillation LoRAs that also adapt the head).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from wan_train.lora.formats import FORMATS
from wan_train.lora.targets import TARGET_PRESETS

DIFFUSERS_LOADER = "diffusers' WanPipeline.load_lora_weights"
BLOCK_LINEAR = re.compile(TARGET_PRESETS["all_linear"])  # every nn.Linear of a Wan transformer block
# the block Linears diffusers' musubi converter takes from every block, and the I2V image pair it takes from all or none
_BLOCK = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
          "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
_IMAGE = ("cross_attn.k_img", "cross_attn.v_img")
_SHOW = 5  # modules listed per reason


def outside_blocks(names: Iterable[str]) -> list[str]:
    """The modules (our names) that are not a Linear of a transformer block, in the given order."""
    return [n for n in names if not BLOCK_LINEAR.fullmatch(n)]


def unreadable_by(names: Iterable[str], *, format: str) -> dict[str, str]:
    """Known loaders of `format` files (module docstring) that cannot read one holding these modules (our names):
    loader -> why, one line. {} when every loader we know of reads it."""
    if format not in FORMATS:
        raise ValueError(f"unreadable_by: format={format!r}; expected one of {FORMATS}")
    names = list(names)
    if format == "comfyui":
        why = _comfyui_in_diffusers(names)
    elif format == "kohya":
        why = _kohya_in_diffusers(names)
    else:
        why = []
    return {DIFFUSERS_LOADER: "; ".join(why)} if why else {}


def _comfyui_in_diffusers(names: list[str]) -> list[str]:
    why = []
    outside = outside_blocks(names)
    if outside:
        why.append(f"modules outside the transformer blocks ({_show(outside)}): its ComfyUI-key converter takes "
                   f".alpha only inside the blocks")
    lone = _lone_image(names)
    if lone:
        why.append(f"{_show(lone)}: k_img without any v_img or the reverse (its converter takes the I2V pair only "
                   f"when both occur)")
    return why


def _kohya_in_diffusers(names: list[str]) -> list[str]:
    why = []
    outside = outside_blocks(names)
    if outside:
        why.append(f"modules outside the transformer blocks ({_show(outside)}): its musubi-key converter takes block "
                   f"keys only")
    present = set(names) - set(outside)
    blocks = {int(n.split(".")[1]) for n in present}
    image = _IMAGE if not _lone_image(names) and any(n.endswith(_IMAGE) for n in present) else ()
    expected = [f"blocks.{i}.{m}" for i in range(len(blocks)) for m in _BLOCK + image]
    missing = [n for n in expected if n not in present]
    extra = sorted(present - set(expected), key=names.index)
    if missing or extra:
        parts = [f"missing {_show(missing)}"] if missing else []
        parts += [f"not taken {_show(extra)}"] if extra else []
        span = "block 0" if len(blocks) == 1 else f"blocks 0..{len(blocks) - 1}"
        why.append(f"its musubi-key converter needs every block Linear of {span} (q, k, v, o of both attentions, "
                   f"ffn.0, ffn.2{', k_img, v_img' if image else ''}) and no other: " + ", ".join(parts))
    return why


def _lone_image(names: list[str]) -> list[str]:
    """k_img LoRAs without any v_img one, or the reverse: diffusers takes the I2V pair only when both occur."""
    k_img = [n for n in names if n.endswith(".cross_attn.k_img")]
    v_img = [n for n in names if n.endswith(".cross_attn.v_img")]
    return [] if bool(k_img) == bool(v_img) else k_img + v_img


def _show(names: list[str]) -> str:
    return ", ".join(names[:_SHOW]) + (f", ... ({len(names)} in all)" if len(names) > _SHOW else "")
