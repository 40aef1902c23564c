"""Parity of the MMAudio 16 kHz audio autoencoder (wan_train.models.audio) with diffusers' MMAudioVAE and
MMAudioVocoder, at tiny widths with the real structure (80 mels, 20 latent channels, levels (1, 2, 4), vocoder
rates 4,4,2,2,2,2).

The weights are written in Ovi's file formats and read by our loader: v1-16.pth (the VAE's flat state dict with
RAW conv weights at arbitrary per-channel scales) and best_netG.pt ({'generator': ...} with every conv as a
weight-norm pair, in both naming styles). diffusers gets the same weights through a conversion written here,
independent of our loader: MMAudio's forced weight normalisation (each output channel to unit RMS, with eps 1e-4,
then / sqrt(fan_in)) for the VAE, g v / ||v|| for the vocoder.

What parity with diffusers does not cover, and how it is covered instead:
- The mel front end's log: diffusers takes the natural log, MMAudio's 16 kHz model log10 (so diffusers'
  ``MMAudioVAE.encode(waveform)`` is wrong for this model). The VAE is compared on mel input; the front end is
  compared with diffusers' up to the factor ln 10, and the whole wave -> latents path with diffusers' mel / ln 10.
  tests/unit/test_audio_autoencoder.py checks the front end against an independent numpy computation.
- The vocoder's last step: diffusers' conv_post has no bias and it clamps to [-1, 1] where MMAudio adds the bias
  and takes tanh. The hidden state entering conv_post is compared (forward pre-hooks), and our output against
  tanh(conv1d(diffusers' hidden state, w_post, b_post)) written here.
- The posterior's log-variance clamp and sampling: we return the posterior mean only (what Ovi uses); the raw
  moments (mean and log-variance) are compared.
- Real widths (hidden 384, vocoder 1536 channels) and bf16: not run here (the structure and code are the same).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import randomize_, rel_err
from wan_train.models.audio import load_audio_autoencoder

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

TINY_VAE = {"mel_bins": 80, "latent_channels": 20, "hidden_channels": 32, "channel_multipliers": (1, 2, 4),
            "layers_per_block": 2, "sample_rate": 16_000, "n_fft": 1024, "hop_length": 256}
TINY_VOCODER = {"num_mels": 80, "upsample_initial_channel": 64, "upsample_rates": (4, 4, 2, 2, 2, 2),
                "upsample_kernel_sizes": (8, 8, 4, 4, 4, 4), "resblock_kernel_sizes": (3, 7, 11),
                "resblock_dilation_sizes": ((1, 3, 5), (1, 3, 5), (1, 3, 5))}
WEIGHT_NORM_NAMES = {"legacy": ("weight_g", "weight_v"),
                     "parametrizations": ("parametrizations.weight.original0", "parametrizations.weight.original1")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions: on a busy 2-core machine OpenMP's second thread waits more than it works."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mmaudio_normalised(raw: torch.Tensor) -> torch.Tensor:
    """What MMAudio's MPConv1D.remove_weight_norm turns a raw [C_out, C_in, k] weight into."""
    fan_in = raw[0].numel()
    rms = raw.double().flatten(1).norm(dim=1).view(-1, 1, 1) / math.sqrt(fan_in)
    return (raw.double() / (1e-4 + rms) / math.sqrt(fan_in)).float()


def official_vae_and_diffusers(seed: int):
    """(v1-16.pth state dict with raw conv weights, diffusers MMAudioVAE holding the normalised ones)."""
    g = torch.Generator().manual_seed(seed)
    reference = diffusers.MMAudioVAE(**TINY_VAE).eval()
    official = {}
    for key, tensor in reference.vae.state_dict().items():  # the VAE's keys, without diffusers' "vae." prefix
        if key.endswith(".weight"):  # raw: random directions at random per-channel scales
            scale = 10 ** (2 * torch.rand(tensor.shape[0], 1, 1, generator=g) - 1)
            official[key] = torch.randn(tensor.shape, generator=g) * scale
        elif key.endswith("learnable_gain"):
            official[key] = 0.3 * torch.randn((), generator=g)
        elif key == "data_mean":
            official[key] = -2 + 0.5 * torch.randn(tensor.shape, generator=g)
        elif key == "data_std":
            official[key] = 0.9 + 0.2 * torch.rand(tensor.shape, generator=g)
        else:
            raise AssertionError(f"unexpected diffusers VAE tensor {key}")
    converted = {k: mmaudio_normalised(v) if k.endswith(".weight") else v for k, v in official.items()}
    reference.vae.load_state_dict(converted, strict=True)
    return official, reference


def official_vocoder_and_diffusers(seed: int, style: str):
    """(best_netG.pt checkpoint with weight-norm pairs and a conv_post bias, diffusers MMAudioVocoder, that bias)."""
    g = torch.Generator().manual_seed(seed)
    reference = randomize_(diffusers.MMAudioVocoder(**TINY_VOCODER), seed=seed).eval()
    g_name, v_name = WEIGHT_NORM_NAMES[style]
    generator = {}
    for key, tensor in reference.state_dict().items():
        if key.endswith(".weight"):  # every conv: w = g v / ||v||, norms over all dims but 0
            conv = key[:-len("weight")]
            norm = tensor.flatten(1).norm(dim=1).view(-1, *(1,) * (tensor.ndim - 1))
            generator[conv + g_name] = norm.clone()
            generator[conv + v_name] = tensor * (0.2 + 2 * torch.rand(norm.shape, generator=g))
        else:
            generator[key] = tensor.clone()
    post_bias = 0.1 * torch.randn(1, generator=g)
    generator["conv_post.bias"] = post_bias
    return {"generator": generator}, reference, post_bias


@pytest.fixture(scope="module", params=["legacy", "parametrizations"])
def models(request, tmp_path_factory):
    """(ours loaded from Ovi's two files, diffusers VAE, diffusers vocoder, MMAudio's conv_post bias)."""
    root = tmp_path_factory.mktemp(request.param)
    official_vae, ref_vae = official_vae_and_diffusers(seed=1)
    checkpoint, ref_vocoder, post_bias = official_vocoder_and_diffusers(seed=2, style=request.param)
    assert len(official_vae) == 57  # 55 parameters + data_mean and data_std, as v1-16.pth holds
    torch.save(official_vae, root / "v1-16.pth")
    torch.save(checkpoint, root / "best_netG.pt")
    ours = load_audio_autoencoder(vae=root / "v1-16.pth", vocoder=root / "best_netG.pt")
    return ours, ref_vae, ref_vocoder, post_bias


def mel_input(frames: int, seed: int = 0) -> torch.Tensor:
    return -2 + torch.randn(2, 80, frames, generator=torch.Generator().manual_seed(seed))


def test_decode_latents_to_mel(models):
    ours, ref_vae, _, _ = models
    z = torch.randn(2, 20, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref_vae.decode(z).sample
    mel = ours.decode_mel(z)
    assert mel.shape == expected.shape == (2, 80, 24)
    assert rel_err(mel, expected) <= 1e-4


@pytest.mark.parametrize("frames", [24, 25])  # an odd last mel frame is dropped by the 2x pooling
def test_encode_mel_moments_and_mean(models, frames):
    ours, ref_vae, _, _ = models
    mel = mel_input(frames)
    with torch.no_grad():
        moments = ref_vae.vae.encode(mel)  # the autoencoder on mel input, before the posterior
        posterior = diffusers.models.autoencoders.vae.DiagonalGaussianDistribution(moments)
        ours_moments = ours.vae.moments(mel)
    assert moments.shape == ours_moments.shape == (2, 40, 12)
    assert rel_err(ours_moments, moments) <= 1e-4
    assert rel_err(ours.encode_mel(mel), posterior.mode()) <= 1e-4


def test_mel_front_end_is_diffusers_in_log10(models):
    ours, ref_vae, _, _ = models
    torch.testing.assert_close(ours.mel.filterbank, ref_vae.mel_converter.mel_basis, rtol=0, atol=1e-6)
    wave = torch.rand(2, 8192, generator=torch.Generator().manual_seed(4)) * 2.2 - 1.1  # clamped to [-1, 1]
    with torch.no_grad():
        natural = ref_vae.mel_converter(wave)
    assert rel_err(ours.wave_to_mel(wave) * math.log(10), natural) <= 1e-5


def test_encode_wave_to_posterior_mean(models):
    ours, ref_vae, _, _ = models
    wave = 0.5 * torch.randn(2, 8192 + 300, generator=torch.Generator().manual_seed(5)).clamp(-2, 2)
    with torch.no_grad():
        mel = ref_vae.mel_converter(wave) / math.log(10)  # diffusers' natural-log front end, in log10
        expected = diffusers.models.autoencoders.vae.DiagonalGaussianDistribution(ref_vae.vae.encode(mel)).mode()
    latents = ours.encode(wave)
    assert latents.shape == expected.shape == (2, 20, 16) and latents.dtype == torch.float32
    assert rel_err(latents, expected) <= 1e-4


def hidden_before_conv_post(vocoder, mel: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = vocoder.conv_post.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            vocoder(mel)
    finally:
        handle.remove()
    return seen[0]


def test_vocoder_matches_up_to_conv_post_and_mmaudio_s_last_step(models):
    ours, _, ref_vocoder, post_bias = models
    mel = mel_input(10, seed=6)
    expected_hidden = hidden_before_conv_post(ref_vocoder, mel)
    assert rel_err(hidden_before_conv_post(ours.vocoder, mel), expected_hidden) <= 1e-4
    # MMAudio: tanh(conv_post(h) + bias); diffusers' conv_post has the same weight and no bias
    expected = torch.tanh(F.conv1d(expected_hidden, ref_vocoder.conv_post.weight, post_bias, padding=3))
    wave = ours.vocode(mel)
    assert wave.shape == (2, 10 * 256)
    assert rel_err(wave, expected.squeeze(1)) <= 1e-4


def test_decode_latents_to_wave(models):
    ours, ref_vae, ref_vocoder, post_bias = models
    z = torch.randn(1, 20, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        hidden = hidden_before_conv_post(ref_vocoder, ref_vae.decode(z).sample)
        expected = torch.tanh(F.conv1d(hidden, ref_vocoder.conv_post.weight, post_bias, padding=3)).squeeze(1)
    wave = ours.decode(z)
    assert wave.shape == (1, 6 * 512) and wave.dtype == torch.float32
    assert rel_err(wave, expected) <= 1e-4
