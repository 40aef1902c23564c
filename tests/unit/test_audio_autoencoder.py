"""The audio autoencoder of Ovi (MMAudio 16 kHz) and its weight-free stand-in MelSpace: the lengths everything
else codes against (157 latents <-> 80,384 samples), the mel front end against an independent numpy computation,
MelSpace's determinism and what it keeps of a tone, and the loader of Ovi's two files (weight-norm pairs in both
naming styles, raw EDM2 conv weights, one-line errors naming the file and the key)."""

import math
import re

import numpy as np
import pytest
import torch

from tests.helpers import Payload, randomize_, rel_err
from wan_train.models.audio import (
    MMAUDIO_16K, TINY_AUDIO, AudioAutoencoder, LogMel, MelConfig, MelSpace, load_audio_autoencoder,
)
from wan_train.models.checkpoint import CheckpointError

SR = 16_000
OVI_LATENTS, OVI_SAMPLES = 157, 80_384  # Ovi's 5 s clips (ovi_facts.md §5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These convolutions are small: on a busy 2-core machine OpenMP's second thread waits more than it works (a
    tiny vocoder pass over 8 mel frames took 0.05 s on one thread, 2-9 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone(freq: float, samples: int, *, amplitude: float = 0.5) -> torch.Tensor:
    return amplitude * torch.sin(2 * math.pi * freq * torch.arange(samples) / SR)


def dominant_hz(wave: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.shape[-1])).abs()
    return spectrum.argmax().item() * SR / wave.shape[-1]


# ------------------------------------------------------------------------------------------ lengths and shapes

@pytest.fixture(scope="module")
def mel_space():
    return MelSpace()


@pytest.fixture(scope="module")
def tiny():
    return randomize_(AudioAutoencoder(TINY_AUDIO), seed=1).eval()


def test_the_real_and_the_stand_in_share_rate_channels_and_lengths(mel_space, tiny):
    with torch.device("meta"):
        real = AudioAutoencoder(MMAUDIO_16K)
    for codec in (real, tiny, mel_space):
        assert (codec.sample_rate, codec.z_dim, codec.samples_per_latent) == (16_000, 20, 512)
        assert codec.latents_per_second == 31.25
        assert codec.latent_length(OVI_SAMPLES) == OVI_LATENTS and codec.num_samples(OVI_LATENTS) == OVI_SAMPLES
        assert codec.latent_length(80_000) == 156  # 5 s exactly: the trailing 0.25 latent is dropped


def test_mel_space_encodes_and_decodes_ovi_lengths(mel_space):
    wave = torch.rand(2, OVI_SAMPLES, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = mel_space.encode(wave)
    assert latents.shape == (2, 20, OVI_LATENTS) and latents.dtype == torch.float32
    decoded = mel_space.decode(latents)
    assert decoded.shape == (2, OVI_SAMPLES) and decoded.dtype == torch.float32
    assert decoded.abs().max() <= 1.0
    assert mel_space.encode(wave[:, :80_000]).shape == (2, 20, 156)


def test_tiny_autoencoder_has_the_same_interface(tiny):
    wave = tone(440, 4 * 512 + 100)[None].repeat(2, 1)
    latents = tiny.encode(wave)
    assert latents.shape == (2, 20, 4) and latents.dtype == torch.float32
    decoded = tiny.decode(latents[:, :, :2])
    assert decoded.shape == (2, 1024) and decoded.abs().max() <= 1.0


@pytest.mark.parametrize("codec", ["mel_space", "tiny"])
def test_bad_shapes_are_refused(codec, request):
    codec = request.getfixturevalue(codec)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        codec.encode(torch.zeros(1, 1, 2048))
    with pytest.raises(ValueError, match="T >= 512"):
        codec.encode(torch.zeros(1, 300))
    with pytest.raises(ValueError, match=r"\[B, 20, L\]"):
        codec.decode(torch.zeros(1, 16, 4))


# ----------------------------------------------------------------------------------------------- mel front end

def numpy_log_mel(wave: np.ndarray) -> np.ndarray:
    """MMAudio's 16 kHz front end, written independently in float64 numpy: reflect padding of 384, 1024-point
    frames every 256 samples under a periodic Hann window, |rfft|, librosa's Slaney filterbank (written here from
    its definition), log10 of the clamped mel."""
    n_fft, hop, pad, n_mels = 1024, 256, 384, 80
    x = np.pad(wave, (pad, pad), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    magnitude = np.sqrt(np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 + 1e-9).T  # [F, N]

    def to_mel(hz):
        hz = np.asarray(hz, dtype=np.float64)
        return np.where(hz < 1000, 3 * hz / 200, 15 + 27 * np.log(np.maximum(hz, 1e-9) / 1000) / np.log(6.4))

    def to_hz(mel):
        return np.where(mel < 15, 200 * mel / 3, 1000 * 6.4 ** ((mel - 15) / 27))

    edges = to_hz(np.linspace(to_mel(0.0), to_mel(8000.0), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * SR / n_fft
    bank = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        lo, mid, hi = edges[m:m + 3]
        bank[m] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None) * 2 / (hi - lo)
    return np.log10(np.maximum(bank @ magnitude, 1e-5))


def test_log_mel_matches_an_independent_numpy_computation():
    g = torch.Generator().manual_seed(0)
    wave = torch.cat([0.3 * torch.randn(1, 8000, generator=g).clamp(-1, 1), tone(1000, 8000)[None] * 0.01])
    mel = LogMel(MelConfig())(wave)
    assert mel.shape == (2, 80, 8000 // 256)
    for i in range(2):
        expected = torch.from_numpy(numpy_log_mel(wave[i].double().numpy()))
        assert (mel[i].double() - expected).abs().max() < 1e-4
    silence = LogMel(MelConfig())(torch.zeros(1, 1024))
    assert torch.equal(silence, torch.full_like(silence, -5.0))  # the 1e-5 floor


def test_log_mel_frames_and_the_floor():
    mel = LogMel(MelConfig())
    assert mel(torch.zeros(1, OVI_SAMPLES)).shape == (1, 80, 2 * OVI_LATENTS)
    assert mel.num_frames(OVI_SAMPLES) == 314 and mel.num_frames(80_000) == 312
    with pytest.raises(ValueError, match="too short"):
        mel(torch.zeros(1, 384))


def test_log_mel_matches_librosa_if_installed():
    librosa = pytest.importorskip("librosa")
    bank = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    torch.testing.assert_close(LogMel(MelConfig()).filterbank, torch.from_numpy(bank), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------- MelSpace

def test_mel_space_is_deterministic_and_batch_independent(mel_space):
    latents = torch.randn(3, 20, 40, generator=torch.Generator().manual_seed(1))
    first = mel_space.decode(latents)
    assert torch.equal(first, mel_space.decode(latents))
    assert torch.equal(first, MelSpace().decode(latents))  # a fresh instance: nothing random per object
    torch.testing.assert_close(mel_space.decode(latents[1:2]), first[1:2], rtol=0, atol=1e-5)


def test_a_tone_keeps_its_pitch_through_mel_space(mel_space):
    wave = tone(440, OVI_SAMPLES)[None]
    decoded = mel_space.decode(mel_space.encode(wave))
    assert abs(dominant_hz(decoded[0]) - 440) < 20
    assert abs(dominant_hz(mel_space.decode(mel_space.encode(tone(2000, OVI_SAMPLES)[None]))[0]) - 2000) < 60


def test_mel_space_latents_spread_about_one_and_round_trip_at_the_mel_level(mel_space):
    g = torch.Generator().manual_seed(2)
    waves = torch.stack([tone(440, 32_768), 0.1 * torch.randn(32_768, generator=g), tone(3000, 32_768, amplitude=0.05)])
    latents = mel_space.encode(waves)
    assert 0.2 < latents.std() < 3 and latents.abs().max() < 10
    assert torch.allclose(mel_space.encode_mel(mel_space.decode_mel(latents)), latents, atol=1e-4)


def test_noise_keeps_its_level_through_mel_space(mel_space):
    noise = 0.1 * torch.randn(1, OVI_SAMPLES, generator=torch.Generator().manual_seed(3))
    rms = mel_space.decode(mel_space.encode(noise)).pow(2).mean().sqrt()
    assert 0.07 < rms < 0.13


# ------------------------------------------------------------------------------------------------------ loader

def weight_norm_pairs(state: dict, style: str, *, seed: int = 0) -> dict:
    """A plain conv state dict as BigVGAN's checkpoint stores it: each conv weight w as (g, v) with v = w times a
    random positive per-channel scale and g = ||w|| over dims 1..n (so g v / ||v|| = w)."""
    g_name, v_name = {"legacy": ("weight_g", "weight_v"),
                      "parametrizations": ("parametrizations.weight.original0",
                                           "parametrizations.weight.original1")}[style]
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in state.items():
        if key.endswith(".weight"):
            base = key[:-len("weight")]
            norm = w.flatten(1).norm(dim=1).view(-1, *(1,) * (w.ndim - 1))
            out[base + g_name] = norm.clone()
            out[base + v_name] = w * (0.5 + torch.rand(norm.shape, generator=gen))
        else:
            out[key] = w.clone()
    return out


def write_ovi_files(root, model: AudioAutoencoder, *, style: str = "legacy"):
    """v1-16.pth (the VAE's flat state dict) and best_netG.pt ({'generator': weight-norm pairs})."""
    vae, vocoder = root / "v1-16.pth", root / "best_netG.pt"
    torch.save({k: v.clone() for k, v in model.vae.state_dict().items()}, vae)
    torch.save({"generator": weight_norm_pairs(model.vocoder.state_dict(), style)}, vocoder)
    return vae, vocoder


@pytest.fixture()
def files(tmp_path, tiny):
    return write_ovi_files(tmp_path, tiny)


def message(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("style", ["legacy", "parametrizations"])
def test_weight_norm_pairs_of_both_naming_styles_are_fused(tmp_path, tiny, style):
    vae, vocoder = write_ovi_files(tmp_path, tiny, style=style)
    loaded = load_audio_autoencoder(vae=vae, vocoder=vocoder)
    assert loaded.config.vae.hidden_dim == 32 and loaded.config.vocoder.channels == 64  # read from the shapes
    assert not any(p.requires_grad or p.is_meta for p in loaded.parameters())
    for key, w in tiny.vocoder.state_dict().items():
        torch.testing.assert_close(loaded.vocoder.state_dict()[key], w, rtol=1e-6, atol=1e-7)
    mel = torch.randn(1, 80, 8, generator=torch.Generator().manual_seed(4)) - 2
    assert rel_err(loaded.vocode(mel), tiny.vocode(mel)) < 1e-5


def test_raw_vae_weights_are_normalised_at_load_as_mmaudio_does(tmp_path, tiny):
    """The file holds raw conv weights; what the network uses is w / (1e-4 + rms(w)) / sqrt(fan_in) per output
    channel (forced weight normalisation), so rescaling a file's channels barely changes the network."""
    state = {k: v.clone() for k, v in tiny.vae.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    rescaled = {k: v * 10 ** (2 * torch.rand(v.shape[0], 1, 1, generator=g) - 1) if k.endswith(".weight") else v
                for k, v in state.items()}
    generator = {"generator": weight_norm_pairs(tiny.vocoder.state_dict(), "legacy")}
    torch.save(generator, tmp_path / "best_netG.pt")
    loaded = {}
    for name, vae_state in (("plain", state), ("rescaled", rescaled)):
        torch.save(vae_state, tmp_path / f"{name}.pth")
        loaded[name] = load_audio_autoencoder(vae=tmp_path / f"{name}.pth", vocoder=tmp_path / "best_netG.pt")
    key = "encoder.down.1.block.0.conv1.weight"
    w = rescaled[key]
    fan_in = w[0].numel()
    expected = w / (1e-4 + w.flatten(1).norm(dim=1).view(-1, 1, 1) / math.sqrt(fan_in)) / math.sqrt(fan_in)
    torch.testing.assert_close(loaded["rescaled"].vae.state_dict()[key], expected)
    wave = tone(300, 8 * 512)[None]
    assert rel_err(loaded["rescaled"].encode(wave), loaded["plain"].encode(wave)) < 1e-2
    z = torch.randn(1, 20, 4, generator=g)
    assert rel_err(loaded["rescaled"].decode_mel(z), loaded["plain"].decode_mel(z)) < 1e-2


def test_load_with_dtype_and_device(files):
    loaded = load_audio_autoencoder(vae=files[0], vocoder=files[1], dtype=torch.bfloat16, device="cpu")
    assert loaded.dtype == torch.bfloat16 and loaded.mel.filterbank.dtype == torch.float32
    latents = loaded.encode(tone(440, 4096)[None])
    assert latents.dtype == torch.float32 and latents.shape == (1, 20, 8)


def test_a_missing_key_names_the_file_and_the_key(files):
    vae, vocoder = files
    state = torch.load(vae, weights_only=True)
    del state["decoder.up.1.upsample.conv.weight"]
    torch.save(state, vae)
    with pytest.raises(CheckpointError) as error:
        load_audio_autoencoder(vae=vae, vocoder=vocoder)
    assert re.search(rf"^{re.escape(str(vae))}: .*missing key decoder\.up\.1\.upsample\.conv\.weight", message(error))


def test_an_unexpected_or_misshapen_key_names_the_key(files):
    vae, vocoder = files
    checkpoint = torch.load(vocoder, weights_only=True)
    checkpoint["generator"]["conv_post.bias"] = torch.zeros(2)
    checkpoint["generator"]["extra.alpha"] = torch.zeros(3)
    torch.save(checkpoint, vocoder)
    with pytest.raises(CheckpointError) as error:
        load_audio_autoencoder(vae=vae, vocoder=vocoder)
    text = message(error)
    assert text.startswith(str(vocoder)) and "unexpected key extra.alpha" in text
    assert "key conv_post.bias has shape [2], expected [1]" in text


def test_a_weight_norm_half_pair_is_refused(files):
    vae, vocoder = files
    checkpoint = torch.load(vocoder, weights_only=True)
    del checkpoint["generator"]["ups.2.0.weight_v"]
    torch.save(checkpoint, vocoder)
    with pytest.raises(CheckpointError, match=r"missing key ups\.2\.0\.weight_v") as error:
        load_audio_autoencoder(vae=vae, vocoder=vocoder)
    message(error)


def test_a_vocoder_file_without_generator_is_refused(files):
    vae, vocoder = files
    torch.save(torch.load(vocoder, weights_only=True)["generator"], vocoder)  # the bare state dict
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(vocoder))}: expected a BigVGAN checkpoint"):
        load_audio_autoencoder(vae=vae, vocoder=vocoder)


@pytest.mark.parametrize("which", ["vae", "vocoder"])
def test_not_a_torch_file_and_a_refused_pickle_name_the_file(files, tmp_path, which):
    paths = dict(zip(("vae", "vocoder"), files, strict=True))
    paths[which].write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(paths[which]))}: "):
        load_audio_autoencoder(**paths)
    marker = tmp_path / "MARKER"
    torch.save({"generator": {"conv_pre.bias": torch.zeros(1)}, "payload": Payload(marker)}, paths[which])
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(paths[which]))}: .*could run code"):
        load_audio_autoencoder(**paths)
    assert not marker.exists()
