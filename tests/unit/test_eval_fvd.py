"""FVD: the Fréchet distance against an independent numpy reference, the I3D topology and its three weight-file
routes (random weights in the real layouts, nothing downloaded), streaming, the protocol record and the real-stats
cache. The I3D runs at 224x224 (its minimum is 193 px), about a second per clip on 2 CPU cores, so only a few
tests push clips through it; the FVD bookkeeping tests use a cheap stand-in behind the same wrapper."""

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

from data_tools.random_weights import randomize_i3d_
from eval.fvd import FVD, Protocol, RealStats, clips_from_video, frechet_distance
from eval.i3d import MIN_FRAMES, MIN_PIXELS, I3DFeatures, InceptionI3d, load_i3d, resize_frames, weights_hash

# ---------------------------------------------------------------------------------------------- helpers


def video(*shape, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Cheap(nn.Module):
    """A stand-in for the I3D body behind the real wrapper: [B, 3, T, 224, 224] -> [B, 400] by pooling to
    3 x 2 x 4 x 4 and a fixed random projection (rank <= 96, plenty for the bookkeeping tests)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(96, 400)
        randomize_i3d_(self, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(400, 96, generator=torch.Generator().manual_seed(2)))

    def forward(self, x):
        return self.proj(F.adaptive_avg_pool3d(x, (2, 4, 4)).flatten(1))


def cheap_features(sha: str = "c" * 64) -> I3DFeatures:
    return I3DFeatures(Cheap(), layout="rgb_imagenet", weights_file="cheap.pt", weights_sha256=sha)


def numpy_frechet(mu1, s1, mu2, s2) -> float:
    """Independent reference: Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2), a symmetric PSD square root."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def gaussian_stats(d: int, n: int, seed: int, *, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    x = rng.standard_normal((n, d)) @ mix + shift + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.fixture(scope="module")
def i3d_state():
    return randomize_i3d_(InceptionI3d(), 0).state_dict()


@pytest.fixture(scope="module")
def i3d(i3d_state):
    net = InceptionI3d()
    net.load_state_dict(i3d_state)
    return I3DFeatures(net.eval(), layout="rgb_imagenet", weights_file="random", weights_sha256="0" * 64)


@pytest.fixture(scope="module")
def clip():
    return video(1, 3, 16, 64, 64, seed=3)


@pytest.fixture(scope="module")
def i3d_out(i3d, clip):
    return i3d(clip)


# ---------------------------------------------------------------------------------------------- Fréchet core


@pytest.mark.parametrize("d", [16, 64])
def test_frechet_distance_matches_numpy_reference(d):
    mu1, s1 = gaussian_stats(d, 4 * d, seed=d)
    mu2, s2 = gaussian_stats(d, 4 * d, seed=d + 1, shift=0.3)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), numpy_frechet(mu1, s1, mu2, s2)
    assert isinstance(ours, float)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-9)  # symmetric
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6  # identical statistics
    tm = _compute_fid(*(torch.as_tensor(a) for a in (mu1, s1, mu2, s2))).item()
    assert ours == pytest.approx(tm, rel=1e-9)  # torchmetrics' (private) formula, reimplemented


@pytest.mark.parametrize("d", [16, 64, 400])
def test_frechet_distance_matches_the_scipy_sqrtm_reference(d):
    """StyleGAN-V / pytorch-fid: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), real part, with scipy."""
    from scipy import linalg

    mu1, s1 = gaussian_stats(d, 4 * d, seed=d)
    mu2, s2 = gaussian_stats(d, 4 * d, seed=d + 7, shift=0.5)
    root = linalg.sqrtm(s1 @ s2).real
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6 * np.trace(s1)  # identical sets: ~0


def test_frechet_distance_closed_forms_and_bad_shapes():
    a, b = torch.rand(8, dtype=torch.float64) + 0.1, torch.rand(8, dtype=torch.float64) + 0.1
    mu1, mu2 = torch.zeros(8), torch.full((8,), 0.5)
    # diagonal Gaussians: ||dmu||^2 + sum (sqrt a - sqrt b)^2
    expected = 8 * 0.25 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="mu \\[d\\] and sigma \\[d, d\\]"):
        frechet_distance(mu1, torch.eye(8), torch.zeros(7), torch.eye(7))


# ---------------------------------------------------------------------------------------------- I3D network


def test_i3d_has_piergiaj_names_and_shapes():
    state = InceptionI3d().state_dict()
    tensors = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(tensors) == 287  # 57 conv+BN units x 5 + logits weight and bias (reference/eval.md §1.4)
    assert tensors["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert tensors["Mixed_5c.b3b.conv3d.weight"].shape == (128, 832, 1, 1, 1)
    assert tensors["Mixed_4b.b1b.bn.running_var"].shape == (208,)
    assert tensors["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    assert tensors["logits.conv3d.bias"].shape == (400,)
    assert sum(v.numel() for k, v in tensors.items() if "running" not in k) == pytest.approx(12.7e6, rel=0.01)


def test_min_frames_comes_from_the_temporal_strides(i3d):
    # T -> ceil(T/2) (Conv3d_1a) -> ceil(/2) (MaxPool4a) -> ceil(/2) (MaxPool5a) must reach avg_pool's 2 steps
    assert (MIN_FRAMES, MIN_PIXELS) == (9, 193)
    with pytest.raises(ValueError, match="at least 9 frames"):
        i3d(video(1, 3, 8, 64, 64, seed=0))
    with pytest.raises(ValueError, match="\\[-1, 1\\]"):
        i3d(video(1, 3, 9, 8, 8, seed=0) * 3)


def test_i3d_output_shape(i3d_out):
    assert i3d_out.shape == (1, 400) and i3d_out.dtype == torch.float32
    assert torch.isfinite(i3d_out).all() and i3d_out.std() > 0


def test_wrapper_resizes_every_frame_straight_to_224():
    seen = []

    class Record(nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 400)

    clips = video(2, 3, 9, 48, 80, seed=4)  # non-square: stretched, not cropped
    I3DFeatures(Record(), layout="rgb_imagenet")(clips)
    frames = clips.permute(0, 2, 1, 3, 4).flatten(0, 1)
    expected = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
    assert seen[0].shape == (2, 3, 9, 224, 224)
    torch.testing.assert_close(seen[0].permute(0, 2, 1, 3, 4).flatten(0, 1), expected)
    assert resize_frames(seen[0]) is seen[0]  # already 224: untouched


def test_state_dict_layouts_round_trip(tmp_path, i3d_state, clip, i3d_out):
    # piergiaj rgb_imagenet.pt: plain names, no num_batches_tracked (saved before torch 0.4.1), legacy pickle
    piergiaj = {k: v for k, v in i3d_state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(piergiaj, path, _use_new_zipfile_serialization=False)
    loaded = load_i3d(path)
    assert (loaded.layout, loaded.weights_sha256) == ("rgb_imagenet", hashlib.sha256(path.read_bytes()).hexdigest())
    assert weights_hash(path) == loaded.weights_sha256
    assert torch.equal(loaded(clip), i3d_out)

    # VideoGPT/TATS i3d_pretrained_400.pt: same names, BatchNorm eps 1e-5; here also through DataParallel
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save({f"module.{k}": v for k, v in i3d_state.items()}, path)
    loaded = load_i3d(path)
    reference = InceptionI3d(bn_eps=1e-5)
    reference.load_state_dict(i3d_state)
    out = loaded(clip)
    assert torch.equal(out, reference.eval()(resize_frames(clip)))
    assert not torch.allclose(out, i3d_out)  # the eps is part of the layout


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch", "ignore::torch.jit.TracerWarning")
def test_torchscript_file_with_stylegan_v_signature(tmp_path, i3d, clip, i3d_out):
    class StyleGANVSignature(nn.Module):
        """StyleGAN-V's i3d_torchscript.pt call: uint8-range input when rescale, softmax unless
        return_features; so the wrong flags would change the output."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = False) -> torch.Tensor:
            if resize:
                raise RuntimeError("resize inside the graph is not emulated")
            if rescale:
                x = x / 127.5 - 1
            logits = self.net(x)
            return logits if return_features else logits.softmax(dim=1)

    traced = torch.jit.trace(i3d.net, resize_frames(clip), check_trace=False)
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(StyleGANVSignature(traced)).save(str(path))
    loaded = load_i3d(path)
    assert loaded.layout == "i3d_torchscript"
    torch.testing.assert_close(loaded(clip), i3d_out, rtol=1e-5, atol=1e-5)


def test_bad_weight_files_name_the_path_and_keys(tmp_path, i3d_state):
    garbage = tmp_path / "rgb_imagenet.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match=str(garbage)):
        load_i3d(garbage)

    state = dict(i3d_state)
    del state["Mixed_4c.b2b.bn.running_mean"]
    state["Mixed_9z.b0.conv3d.weight"] = torch.zeros(1)
    state["logits.conv3d.bias"] = torch.zeros(401)
    wrong = tmp_path / "i3d_pretrained_400_wrong.pt"
    torch.save(state, wrong)
    with pytest.raises(ValueError) as err:
        load_i3d(wrong)
    for text in (str(wrong), "Mixed_4c.b2b.bn.running_mean", "Mixed_9z.b0.conv3d.weight", "logits.conv3d.bias"):
        assert text in str(err.value)

    unnamed = tmp_path / "weights.pt"
    torch.save(state, unnamed)
    with pytest.raises(ValueError, match="layout="):
        load_i3d(unnamed)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_i3d(tmp_path / "nowhere.pt")


# ---------------------------------------------------------------------------------------------- clips, protocol


def test_clips_from_video_non_overlapping_windows():
    frames = torch.arange(40.0).view(1, 40, 1, 1).expand(3, 40, 2, 2)
    clips = clips_from_video(frames, frames=16)
    assert clips.shape == (2, 3, 16, 2, 2)
    assert clips[1, 0, :, 0, 0].tolist() == list(range(16, 32))
    strided = clips_from_video(frames[:, :20], frames=4, stride=2)  # windows of 8, keeping every 2nd frame
    assert strided[:, 0, :, 0, 0].tolist() == [[0, 2, 4, 6], [8, 10, 12, 14]]
    assert clips_from_video(frames[:, :15], frames=16).shape == (0, 3, 16, 2, 2)  # too short: none


def test_protocol_validates_and_records():
    p = Protocol.for_network(cheap_features(), clips=64)
    d = p.as_dict()
    assert d["feature"] == "logits400_time_mean" and d["resolution"] == 224 and d["frames"] == 16
    assert d["weights_sha256"] == "c" * 64 and "weights_file" not in p.key()
    for bad in ({"frames": 8}, {"resolution": 256}, {"covariance": "mle"}, {"clips": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Protocol.for_network(cheap_features(), **bad)


# ---------------------------------------------------------------------------------------------- FVD


def fvd_of(network, *, real, fakes, **protocol):
    metric = FVD(network, protocol=Protocol.for_network(network, **protocol))
    metric.update(real, real=True)
    for fake in fakes:
        metric.update(fake, real=False)
    return metric


def test_fvd_identical_sets_zero_shifted_positive_streaming_equal():
    net = cheap_features()
    real = video(24, 3, 9, 16, 16, seed=5)
    same = fvd_of(net, real=real, fakes=[real], frames=9, clips=24)
    # 24 clips in 400 dims: a rank-23 covariance, whose ~377 null eigenvalues leave rounding of order
    # sqrt(eps) * scale after the square root; published N = 2048 > 400 sets are full rank
    scale = same.real_features_cov_sum.trace().item() / 24
    assert abs(same.compute()) < 1e-6 * scale

    shifted = (real * 0.8 + 0.15).clamp(-1, 1)
    one = fvd_of(net, real=real, fakes=[shifted], frames=9, clips=24)
    two = fvd_of(net, real=real, fakes=[shifted[:10], shifted[10:]], frames=9, clips=24)
    assert one.compute() > 1e-3 * scale
    # float32 features may round differently per batch size; the float64 sums then agree to ~1e-7
    assert int(two.fake_features_num_samples) == 24
    big = one.fake_features_cov_sum.abs().max().item()
    torch.testing.assert_close(two.fake_features_cov_sum, one.fake_features_cov_sum, rtol=1e-6, atol=1e-6 * big)
    assert two.compute() == pytest.approx(one.compute(), rel=1e-6)

    result = same.result()
    assert result["protocol"] == same.protocol.as_dict() and (result["n_real"], result["n_fake"]) == (24, 24)


def test_fvd_unbiased_covariance_matches_torchmetrics_fid():
    net = cheap_features()
    real, fake = video(12, 3, 9, 16, 16, seed=6), video(12, 3, 9, 16, 16, seed=7) * 0.7
    ours = fvd_of(net, real=real, fakes=[fake], frames=9, clips=12, covariance="unbiased").compute()
    fid = FrechetInceptionDistance(feature=net)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert ours == pytest.approx(fid.compute().item(), rel=1e-5)  # torchmetrics casts back to float32
    biased = fvd_of(net, real=real, fakes=[fake], frames=9, clips=12).compute()
    assert biased != pytest.approx(ours, rel=1e-6)


def test_fvd_refuses_inputs_outside_the_protocol():
    net = cheap_features()
    metric = FVD(net, protocol=Protocol.for_network(net, frames=9))
    with pytest.raises(ValueError, match="protocol.frames"):
        metric.update(video(2, 3, 16, 8, 8, seed=0), real=False)
    with pytest.raises(ValueError, match="sha256"):
        FVD(net, protocol=Protocol.for_network(cheap_features(sha="d" * 64)))


def test_fvd_end_to_end_with_random_i3d(i3d):
    # the real network behind torchmetrics' FID machinery (num_features, float64 sums, eval mode)
    real = video(2, 3, 9, 16, 16, seed=8)
    metric = FVD(i3d, protocol=Protocol.for_network(i3d, frames=9, clips=2), reset_real_features=False)
    metric.update(real, real=True)
    metric.update(real, real=False)
    scale = metric.real_features_cov_sum.trace().item() / 2
    assert scale > 0 and abs(metric.compute()) < 1e-6 * scale
    assert metric.result()["protocol"]["weights_layout"] == "rgb_imagenet"
    metric.reset()  # keeps the real side
    metric.update((real * 0.5 + 0.4).clamp(-1, 1), real=False)
    assert metric.compute() > 1e-3 * scale


# ---------------------------------------------------------------------------------------------- real-stats cache


def test_real_stats_cache_round_trip_and_refusals(tmp_path):
    net = cheap_features()
    protocol = Protocol.for_network(net, frames=9, clips=16)
    real, fake = video(16, 3, 9, 16, 16, seed=9), video(16, 3, 9, 16, 16, seed=10) * 0.5
    direct = fvd_of(net, real=real, fakes=[fake], frames=9, clips=16)
    stats = direct.real_statistics(fingerprint="demo-shards@abc123")
    path = stats.save(RealStats.cache_path(tmp_path, fingerprint="demo-shards@abc123", protocol=protocol))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind

    moved = Protocol(**{**protocol.as_dict(), "weights_file": "/elsewhere/cheap.pt"})  # same hash, other place
    loaded = RealStats.load(path, protocol=moved, fingerprint="demo-shards@abc123")
    assert loaded.count == 16 and torch.equal(loaded.sigma, stats.sigma) and loaded.sigma.dtype == torch.float64
    cached = FVD(net, protocol=protocol, real_stats=loaded)
    cached.update(fake, real=False)
    assert cached.compute() == pytest.approx(direct.compute(), rel=1e-12)
    assert cached.result()["real_fingerprint"] == "demo-shards@abc123"
    with pytest.raises(ValueError, match="already come from"):
        cached.update(real, real=True)

    other = Protocol.for_network(net, frames=10, clips=16)
    assert RealStats.cache_path(tmp_path, fingerprint="demo-shards@abc123", protocol=other) != path
    with pytest.raises(ValueError, match=f"{path}.*frames"):
        RealStats.load(path, protocol=other)
    with pytest.raises(ValueError, match="not 'other-data'"):
        RealStats.load(path, protocol=protocol, fingerprint="other-data")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"junk")
    with pytest.raises(ValueError, match=str(corrupt)):
        RealStats.load(corrupt, protocol=protocol)
