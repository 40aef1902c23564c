"""Test helpers: random weights in which every parameter matters (data_tools.random_weights), relative error,
tiny models in the official file formats, a pickle payload."""

from pathlib import Path

import torch
from torch import nn

from data_tools.random_weights import randomize_  # noqa: F401 (tests import it from here)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dit_inputs(cfg, *, batch=2, frames=3, height=6, width=10, prompt_lens=(7, 4), seed=0, per_token_t=False):
    """Random DiT inputs on an odd latent grid, with zero-padded prompts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    latent_ch = cfg.out_dim
    x = torch.randn(batch, latent_ch, frames, height, width, generator=g)
    y = torch.randn(batch, cfg.in_dim - latent_ch, frames, height, width, generator=g) if cfg.in_dim > latent_ch else None
    context = torch.randn(batch, max(prompt_lens) + 2, cfg.text_dim, generator=g)
    for i, n in enumerate(prompt_lens):
        context[i, n:] = 0
    tokens = (frames // cfg.patch_size[0]) * (height // cfg.patch_size[1]) * (width // cfg.patch_size[2])
    t = 1000 * torch.rand(batch, generator=g)
    if per_token_t:  # ti2v: the first latent frame's tokens are clean (t = 0)
        first = tokens // (frames // cfg.patch_size[0])
        t = torch.cat([torch.zeros(batch, first), t[:, None].expand(batch, tokens - first)], dim=1)
    clip_fea = torch.randn(batch, 257, cfg.image_dim, generator=g) if cfg.has_image_branch else None
    return dict(x=x, t=t, context=context, y=y, clip_fea=clip_fea)


# --------------------------------------------------------------------- tiny files in the official Wan formats

UMT5_HF_TO_OFFICIAL = {  # transformers UMT5 -> official Wan names (wan_arch.md §3.1), independent of wan_train
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


def umt5_official_state(hf_state: dict) -> dict:
    """A transformers UMT5EncoderModel state dict in the layout of models_t5_umt5-xxl-enc-bf16.pth."""
    out = {"token_embedding.weight": hf_state["shared.weight"].clone(),
           "norm.weight": hf_state["encoder.final_layer_norm.weight"].clone()}
    for key, tensor in hf_state.items():
        if key.startswith("encoder.block."):
            _, _, i, rest = key.split(".", 3)
            out[f"blocks.{i}.{UMT5_HF_TO_OFFICIAL[rest]}"] = tensor.clone()
    return out


def write_tiny_tokenizer(path, sentences=("A red fox jumps over the lazy dog.", "Rain over a neon city at night."),
                         vocab_size=60):
    """A tiny Unigram tokenizer folder with the T5 conventions: <pad> 0, </s> 1, <unk> 2, EOS appended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer, tok.pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(list(sentences) * 10, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            ).save_pretrained(path)
    return path


def write_official_folder(root, size="tiny"):
    """A Wan folder as downloaded: config.json + DiT safetensors, Wan2.1_VAE.pth, the umT5 .pth and tokenizer
    folder, and for i2v the open-clip .pth."""
    from transformers import UMT5Config, UMT5EncoderModel

    from wan_train.models import WanDiT, WanVAE, get_size, save_dit
    from wan_train.models.encoders import ClipVisionConfig, ClipVisionEncoder
    from wan_train.models.vae import TINY_VAE_CONFIGS

    TEXT_DIM = get_size("tiny").dit.text_dim
    dit = randomize_(WanDiT(get_size(size).dit))
    save_dit(dit, root)
    vae = get_size(size).vae  # wan2.1 (z16) or wan2.2 (z48, TI2V)
    torch.save(randomize_(WanVAE(TINY_VAE_CONFIGS[vae])).state_dict(), root / f"{vae.capitalize()}_VAE.pth")
    t5 = randomize_(UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=TEXT_DIM, num_heads=4, d_kv=8, d_ff=48,
                                                num_layers=1)))
    torch.save(umt5_official_state(t5.state_dict()), root / "models_t5_umt5-xxl-enc-bf16.pth")
    write_tiny_tokenizer(root / "google" / "umt5-xxl")
    if dit.config.has_image_branch:
        clip = ClipVisionEncoder(ClipVisionConfig(image_size=28, dim=dit.config.image_dim, mlp_dim=64, num_layers=2))
        state = {f"visual.{k}": v for k, v in randomize_(clip).state_dict().items()}
        torch.save(state, root / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    return dit


def random_lora_modules(dit: nn.Module, *, seed: int, rank: int = 4, alpha: float = 8.0, std: float = 0.1,
                        preset: str = "attn_qkvo_ffn") -> dict:
    """Seeded random LoRA factors (our module name -> LoraModule) for every Linear the preset targets; B is not
    zero, so the adapter changes the output."""
    from wan_train.lora import LoraModule, targeted_modules

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in targeted_modules(dit, preset):
        linear = dit.get_submodule(name)
        out[name] = LoraModule(A=torch.randn(rank, linear.in_features, generator=g) * std,
                               B=torch.randn(linear.out_features, rank, generator=g) * std, scale=alpha / rank)
    return out


def publish_random_adapter(root, client, name, dits: dict, *, seed, size="tiny", tmp):
    """A registry version as a training run leaves it: per expert key a peft folder stamped with its base."""
    from wan_train.lora import Registry, base_identity, write_lora
    from wan_train.lora.resolve import BASE_KEY, EXPERT_KEY

    stage = tmp / f"stage-{client}-{name}-{seed}"
    weights, identity = {}, {}
    for i, (key, dit) in enumerate(dits.items()):
        folder = stage if key == "dit" else stage / key
        identity[key] = base_identity(dit)
        write_lora(folder, random_lora_modules(dit, seed=seed + i, std=0.2), format="peft",
                   metadata={BASE_KEY: identity[key], EXPERT_KEY: key})
        weights[key] = "adapter_model.safetensors" if key == "dit" else f"{key}/adapter_model.safetensors"
    manifest = {"kind": "style", "trigger_words": ["acme style"], "experts": list(dits), "weights": weights,
                "base": {"name": size, "checkpoint": None, "identity": identity}, "steps": {}, "scores": {}}
    return Registry(root).publish(client, name, stage, manifest)


class Payload:
    """A pickle payload: unpickled, it creates `marker`, so the file exists only if a loader ran code from the
    pickle (torch.save a dict holding one to make a crafted checkpoint)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)
