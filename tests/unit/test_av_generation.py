"""Generation with sound through the shared denoising loop (wan_train.inference.av / joint): the joint state,
guidance per modality, the noise, the first frame of ti2av, the sound's length, and the prompt tags."""

import pytest
import torch

from tests.helpers import randomize_
from wan_train.inference.av import audio_latent_length, generate_av, joint_noise
from wan_train.inference.av_prompts import check_av_prompts, prompt_problem
from wan_train.inference.joint import JointLayout, joint_velocity
from wan_train.inference.pipeline import WanModels, generate, initial_noise
from wan_train.inference.presets import Sampling
from wan_train.models import OviConfig, OviDiT, builtin_text_encoder, get_size
from wan_train.models.audio import MelSpace
from wan_train.models.vae import PixelSpace

SETTINGS = Sampling(steps=2, width=32, height=32, num_frames=9, fps=16.0, negative_prompt="blur",
                    audio_negative_prompt="noise", slg_layer=1)


@pytest.fixture(scope="module")
def models():
    size = get_size("tiny-ovi")
    dit = randomize_(OviDiT(OviConfig(video=size.dit, audio=size.audio)), seed=5).eval()
    vae = PixelSpace(spatial_compression=16, temporal_compression=4, detail=2)  # 48 channels, Wan2.2's strides
    return WanModels({None: dit}, vae, builtin_text_encoder(text_dim=4096), audio_vae=MelSpace(), size="tiny-ovi")


def test_the_layout_splits_and_joins_without_copies():
    layout = JointLayout((2, 3, 1, 2, 2), (2, 4, 5))
    video, audio = torch.randn(2, 3, 1, 2, 2), torch.randn(2, 4, 5)
    x = layout.join(video, audio)
    assert x.shape == (2, 12 + 20)
    v, a = layout.split(x)
    assert torch.equal(v, video) and torch.equal(a, audio)
    v.zero_()
    assert torch.all(x[:, :12] == 0) and torch.equal(x[:, 12:].view(2, 4, 5), audio)


def test_each_modality_has_its_own_guidance_and_the_unconditional_pass_skips_the_slg_block(models):
    dit = models.dits[None]
    layout = JointLayout((1, 48, 1, 2, 2), (1, 20, 6))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48 * 4 + 20 * 6, generator=g)
    pos, neg, neg_audio = (torch.randn(1, n, 4096, generator=g) for n in (3, 2, 4))
    t = torch.tensor([600.0])
    video, audio = layout.split(x)
    with torch.no_grad():
        c_video, c_audio = dit(video, audio, t, t, pos)
        u_video, u_audio = dit(video, audio, t, t, neg, audio_context=neg_audio, skip_blocks=(1,))
        out = joint_velocity(dit, layout, x, t, t, pos, neg, neg_audio, video_scale=4.0, audio_scale=1.0,
                             slg_layer=1)
    v, a = layout.split(out)
    assert torch.allclose(v, u_video + 4.0 * (c_video - u_video), atol=1e-5)
    assert torch.allclose(a, c_audio, atol=1e-5)  # audio scale 1: the conditional audio velocity
    assert not torch.allclose(u_audio, c_audio)


def test_the_video_noise_is_a_video_only_models_and_the_audio_noise_follows_it():
    layout = JointLayout((2, 3, 2, 2, 2), (2, 4, 7))
    noise = joint_noise((3, 2, 2, 2), (4, 7), [10, 11], layout)
    video, audio = layout.split(noise)
    assert torch.equal(video, initial_noise((3, 2, 2, 2), [10, 11]))
    g = torch.Generator().manual_seed(11)
    torch.randn(3, 2, 2, 2, generator=g)
    assert torch.equal(audio[1], torch.randn(4, 7, generator=g))


def test_ti2av_keeps_the_encoded_first_frame_and_the_sound_fills_the_video(models):
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    out = generate_av(models, "a red ball <S>hi<E>", settings=SETTINGS, seed=1, task="ti2av", images=image,
                      decode=False)
    first = models.vae.encode(image[:, :, None])
    assert torch.equal(out.video[:, :, :1], first)
    assert out.audio.shape == (1, 20, 9 * 16000 // 16 // 512)  # whole latents in 9 frames at 16 fps
    decoded = generate_av(models, "a red ball <S>hi<E>", settings=SETTINGS, seed=1, task="ti2av", images=image)
    assert decoded.video.shape == (1, 3, 9, 32, 32) and decoded.sample_rate == 16000
    assert decoded.audio.shape == (1, 17 * 512) and abs(decoded.audio.shape[1] / 16000 - 9 / 16) < 1 / 16
    assert audio_latent_length(models, SETTINGS.replace(audio_latent_length=40)) == 40


def test_the_same_seed_gives_the_same_video_and_sound(models):
    a = generate_av(models, ["rain <AUDCAP>rain on a roof<ENDAUDCAP>"], settings=SETTINGS, seed=3)
    b = generate_av(models, ["rain <AUDCAP>rain on a roof<ENDAUDCAP>"], settings=SETTINGS, seed=3)
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)


def test_wrong_tasks_are_refused(models):
    with pytest.raises(ValueError, match="call wan_train.inference.av.generate_av"):
        generate(models, "x", settings=SETTINGS, task="t2av")
    with pytest.raises(ValueError, match="task=ti2av needs images"):
        generate_av(models, "x", settings=SETTINGS, task="ti2av")
    with pytest.raises(ValueError, match="an audio-video model does t2av, ti2av"):
        generate_av(models, "x", settings=SETTINGS, task="t2v")
    with pytest.raises(ValueError, match=r"slg_layer=11: this model has blocks 0\.\.1 \(-1: skip none\)"):
        generate_av(models, "x", settings=SETTINGS.replace(slg_layer=11))


@pytest.mark.parametrize("prompt, problem", [
    ("He says <S>hello<E> and <AUDCAP>rain<ENDAUDCAP>", None),
    ("<S>one<E> then <S>two<E>", None),
    ("He says <S>hello", "<S> at character 8 is not closed by <E>"),
    ("<S>hi <AUDCAP>x<ENDAUDCAP><E>", "<AUDCAP> at character 6 opens inside <S> (opened at character 0)"),
    ("rain<E>", "<E> at character 4 closes nothing"),
    ("<AUDCAP>rain<E>", "<E> at character 12 cannot close <AUDCAP> (opened at character 0); expected <ENDAUDCAP>"),
    ("<S> <E>", "<S><E> at character 0 is empty"),
    ("<AUDCAP>a<ENDAUDCAP><AUDCAP>b<ENDAUDCAP>", "a second <AUDCAP> at character 20: one sound description per prompt"),
    ("says <s>hello</s>", "'<s>' at character 5 is not a tag (tags are case-sensitive)"),
])
def test_prompt_tags_are_checked(prompt, problem):
    assert prompt_problem(prompt) == problem


def test_a_bad_prompt_is_named_with_the_convention():
    with pytest.raises(ValueError, match=r"prompt 2 \('x <S>y'\): <S> at character 2 is not closed by <E> "
                                         r"\(speech goes as <S>words<E>"):
        check_av_prompts(["fine", "x <S>y"])


def test_reference_voices_are_guided_like_r2v_references_and_read_from_any_sound_file(models, tmp_path):
    import numpy as np

    from wan_train.inference.outputs import encode_wav
    from wan_train.inference.references import read_voice

    size = get_size("tiny-ovi")
    dit = randomize_(OviDiT(OviConfig(video=size.dit, audio=size.audio)).extend_audio_references(1), seed=5).eval()
    layout = JointLayout((1, 48, 1, 2, 2), (1, 20, 6))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48 * 4 + 20 * 6, generator=g)
    pos, neg, neg_audio = (torch.randn(1, n, 4096, generator=g) for n in (3, 2, 4))
    voice = [torch.randn(1, 20, 5, generator=g)]
    t = torch.tensor([600.0])
    video, audio = layout.split(x)
    with torch.no_grad():
        c = dit(video, audio, t, t, pos, audio_refs=voice)
        r = dit(video, audio, t, t, neg, audio_context=neg_audio, audio_refs=voice)
        n = dit(video, audio, t, t, neg, audio_context=neg_audio, audio_refs=[torch.zeros_like(voice[0])])
        out = joint_velocity(dit, layout, x, t, t, pos, neg, neg_audio, video_scale=4.0, audio_scale=3.0,
                             slg_layer=-1, audio_refs=voice, reference_scale=2.0)
    v, a = layout.split(out)
    assert torch.allclose(v, n[0] + 2.0 * (r[0] - n[0]) + 4.0 * (c[0] - r[0]), atol=1e-5)
    assert torch.allclose(a, n[1] + 2.0 * (r[1] - n[1]) + 3.0 * (c[1] - r[1]), atol=1e-5)
    assert not torch.allclose(r[1], n[1])  # the voice is heard
    # through generate_av: the voice changes the sound; a model without slots refuses one, naming why
    voiced = WanModels({None: dit}, models.vae, models.text_encoder, audio_vae=MelSpace(), size="tiny-ovi")
    wave = torch.sin(torch.arange(8000) / 16000 * 2 * torch.pi * 440.0)
    with_voice = generate_av(voiced, ["hello @Video1"], settings=SETTINGS, seed=1, voices=[wave], decode=False)
    without = generate_av(voiced, ["hello @Video1"], settings=SETTINGS, seed=1, decode=False)
    assert not torch.equal(with_voice.audio, without.audio)
    with pytest.raises(ValueError, match="1 reference voices given; this model has no reference-voice slots"):
        generate_av(models, ["hello"], settings=SETTINGS, voices=[wave])
    # read_voice: any sound file, mono at the model's rate
    stereo = np.stack([np.sin(np.arange(48000) / 48000 * 2 * np.pi * 440.0)] * 2).astype(np.float32) * 0.5
    (tmp_path / "voice.wav").write_bytes(encode_wav(stereo, 48000))
    read = read_voice(tmp_path / "voice.wav", rate=16000)
    assert read.ndim == 1 and abs(read.numel() - 16000) <= 64 and 0.4 < float(read.abs().max()) < 0.75
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_voice(tmp_path / "absent.wav", rate=16000)
