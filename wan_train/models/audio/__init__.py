"""The audio autoencoder of Ovi (MMAudio 16 kHz: log-mel front end, mel VAE, BigVGAN vocoder), its weight-free
stand-in MelSpace, and the loader of Ovi's files. Audio latents are [B, C, L]."""

from wan_train.models.audio.autoencoder import AudioAutoencoder
from wan_train.models.audio.config import (
    AUDIO_CONFIGS, MMAUDIO_16K, TINY_AUDIO, AudioAutoencoderConfig, MelConfig, MelVAEConfig, VocoderConfig,
    get_audio_config,
)
from wan_train.models.audio.loading import load_audio_autoencoder, load_audio_space
from wan_train.models.audio.mel import LogMel
from wan_train.models.audio.mel_space import MelSpace

__all__ = ["AUDIO_CONFIGS", "MMAUDIO_16K", "TINY_AUDIO", "AudioAutoencoder", "AudioAutoencoderConfig", "LogMel",
           "MelConfig", "MelSpace", "MelVAEConfig", "VocoderConfig", "get_audio_config", "load_audio_autoencoder",
           "load_audio_space"]
