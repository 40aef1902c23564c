"""The joint audio-video flow objective (wan_train.flow.joint): noise levels per modality and the masked sum."""

import pytest
import torch

from wan_train.flow import SigmaSampler, joint_loss, modality_sigmas, mse_per_sample


def test_independent_sigmas_follow_the_sampler_and_shared_ones_are_equal():
    sampler = SigmaSampler(kind="logit_normal", shift=3.0)
    g = torch.Generator().manual_seed(0)
    u_video, u_audio = torch.rand(4096, generator=g), torch.rand(4096, generator=g)
    video, audio = modality_sigmas(u_video, u_audio, mode="independent", icdf=sampler.icdf)
    assert torch.equal(video, sampler.icdf(u_video)) and torch.equal(audio, sampler.icdf(u_audio))
    assert abs(torch.corrcoef(torch.stack([video, audio]))[0, 1]) < 0.05  # drawn apart
    assert abs(video.median() - audio.median()) < 0.03  # from the same distribution
    shared_video, shared_audio = modality_sigmas(u_video, u_audio, mode="shared", icdf=sampler.icdf)
    assert torch.equal(shared_video, shared_audio)
    with pytest.raises(ValueError, match="flow.audio_sigma='both' is not allowed; allowed: independent, shared"):
        modality_sigmas(u_video, u_audio, mode="both", icdf=sampler.icdf)


def test_the_masks_keep_each_sample_to_the_modalities_it_has():
    video_loss = torch.tensor([1.0, 2.0, 3.0])
    audio_loss = torch.tensor([10.0, float("nan"), 30.0])  # sample 1 has no sound: its audio loss is never used
    loss = joint_loss(video_loss, audio_loss, has_video=torch.tensor([True, True, False]),
                      has_audio=torch.tensor([True, False, True]), audio_weight=0.5)
    assert torch.equal(loss, torch.tensor([1.0 + 5.0, 2.0, 15.0]))


def test_a_masked_modality_gets_no_gradient():
    pred_audio = torch.randn(2, 20, 7, requires_grad=True)
    pred_video = torch.randn(2, 4, 3, 2, 2, requires_grad=True)
    video_loss = mse_per_sample(pred_video, torch.zeros_like(pred_video))
    audio_loss = mse_per_sample(pred_audio, torch.zeros_like(pred_audio))
    joint_loss(video_loss, audio_loss, has_video=torch.tensor([True, True]), has_audio=torch.tensor([True, False]),
               audio_weight=1.0).sum().backward()
    assert pred_audio.grad[0].abs().sum() > 0 and torch.all(pred_audio.grad[1] == 0)
    assert torch.all(pred_video.grad != 0)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"has_audio must be \[B\] like video_loss \(3,\); got \(2,\)"):
        joint_loss(torch.zeros(3), torch.zeros(3), has_video=torch.ones(3, dtype=torch.bool),
                   has_audio=torch.ones(2, dtype=torch.bool), audio_weight=1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        mse_per_sample(torch.zeros(2, 3), torch.zeros(2, 4))
