"""SyncNet LSE-D / LSE-C (eval.syncnet, eval.mfcc): the MFCC front end against an independent transcription of
python_speech_features' mfcc (loops, decimal rounding and scipy's DCT; python_speech_features 0.6 itself agreed
to 1e-12 when this was written), the network in syncnet_python's key layout, a random syncnet_v2.model from
data_tools.make_eval_models loaded and scored, the offset search's sign and LSE arithmetic against a literal
calc_pdist, and one-line errors for wrong files and clips too short."""

import decimal
import math

import numpy as np
import pytest
import torch
from scipy.fftpack import dct

from data_tools.make_eval_models import write_i3d, write_syncnet
from eval.mfcc import mfcc
from eval.syncnet import SyncNet, face_frames, load_syncnet, lse_from_features, syncnet_scores
from tests.helpers import Payload


def reference_mfcc(signal: np.ndarray, rate: int = 16000) -> np.ndarray:
    """python_speech_features.mfcc(signal, rate) with its defaults, step by step as its source reads."""
    signal = np.append(signal[0], signal[1:] - 0.97 * signal[:-1])

    def half_up(v):
        return int(decimal.Decimal(v).quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP))

    length, step = half_up(0.025 * rate), half_up(0.01 * rate)
    count = 1 if len(signal) <= length else 1 + math.ceil((1.0 * len(signal) - length) / step)
    padded = np.concatenate((signal, np.zeros((count - 1) * step + length - len(signal))))
    frames = np.stack([padded[i * step:i * step + length] for i in range(count)])
    power = 1.0 / 512 * np.square(np.absolute(np.fft.rfft(frames, 512)))
    energy = power.sum(1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    mel = np.linspace(0, 2595 * np.log10(1 + (rate / 2) / 700.0), 28)
    corner = np.floor(513 * (700 * (10 ** (mel / 2595.0) - 1)) / rate)
    bank = np.zeros((26, 257))
    for j in range(26):
        for i in range(int(corner[j]), int(corner[j + 1])):
            bank[j, i] = (i - corner[j]) / (corner[j + 1] - corner[j])
        for i in range(int(corner[j + 1]), int(corner[j + 2])):
            bank[j, i] = (corner[j + 2] - i) / (corner[j + 2] - corner[j + 1])
    feat = power @ bank.T
    feat = np.log(np.where(feat == 0, np.finfo(float).eps, feat))
    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :13]
    feat = feat * (1 + 11 * np.sin(np.pi * np.arange(13) / 22))
    feat[:, 0] = np.log(energy)
    return feat


@pytest.mark.parametrize("length", [300, 400, 401, 12345])
def test_mfcc_is_python_speech_features_mfcc(length):
    samples = (np.random.default_rng(length).standard_normal(length) * 3000).astype(np.int16)
    samples[:50] = 0  # silent frames take the eps branch of the log
    ours = mfcc(torch.from_numpy(samples.astype(np.int64)))
    expected = reference_mfcc(samples.astype(np.float64))
    assert ours.shape == expected.shape == (1 + max(0, math.ceil((length - 400) / 160)), 13)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10, atol=1e-9)
    silent = mfcc(torch.zeros(1000))
    np.testing.assert_allclose(silent.numpy(), reference_mfcc(np.zeros(1000)), rtol=1e-10, atol=1e-9)


def test_the_network_has_syncnet_pythons_keys_and_shapes():
    state = SyncNet().state_dict()
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 102 and len(weights) == 88 and sum(v.numel() for v in weights.values()) == 13_640_256
    assert tuple(state["netcnnaud.0.weight"].shape) == (64, 1, 3, 3)
    assert tuple(state["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)
    assert tuple(state["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(state["netcnnlip.18.weight"].shape) == (512, 256, 1, 6, 6)
    assert tuple(state["netfcaud.3.weight"].shape) == tuple(state["netfclip.3.weight"].shape) == (1024, 512)
    assert tuple(state["netcnnlip.19.running_var"].shape) == (512,)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_syncnet(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model", seed=3)


def test_a_random_syncnet_v2_model_loads_and_scores_a_clip(weights):
    assert weights.read_bytes()[:2] == b"\x80\x02"  # torch's legacy (pre-1.6) pickle format
    loaded = load_syncnet(weights)
    assert len(loaded.sha256) == 64 and not loaded.net.training
    torch.manual_seed(0)
    # 9 frames: 4 windows, so lags of 4 or more would meet only the zero padding: vshift 3
    video, sound = torch.rand(3, 9, 40, 56) * 2 - 1, 0.3 * torch.randn(9 * 640)
    first = syncnet_scores(loaded.net, video, sound, fps=25, sample_rate=16000, vshift=3)
    again = syncnet_scores(loaded.net, video, sound, fps=25, sample_rate=16000, vshift=3, batch_size=3)  # 3 + 1
    assert first.distances.shape == (7,) and torch.isfinite(first.distances).all()
    assert first.lse_d == pytest.approx(float(first.distances.min())) and first.lse_c >= 0
    assert first.lse_c == pytest.approx(float(first.distances.median()) - first.lse_d)
    assert -3 <= first.offset <= 3 and first.lse_c > 0
    torch.testing.assert_close(first.distances, again.distances)  # batching changes nothing
    other = syncnet_scores(loaded.net, video, 0.3 * torch.randn(9 * 640), fps=25, sample_rate=16000, vshift=3)
    assert (other.distances - first.distances).abs().max() > 1e-3  # the sound matters
    with pytest.raises(ValueError, match="at least 6 frames"):
        syncnet_scores(loaded.net, video[:, :5], sound, fps=25, sample_rate=16000)


def test_the_offset_is_the_lag_of_the_smallest_mean_distance_positive_when_the_sound_is_late():
    torch.manual_seed(0)
    lips = torch.randn(40, 8)
    for late in (-4, 0, 3):
        # the sound window of video window i is window i + late: its features are the lip features moved later
        sound = torch.randn(40, 8) * 3
        for i in range(40):
            if 0 <= i + late < 40:
                sound[i + late] = lips[i]
        found = lse_from_features(lips, sound, vshift=15)
        assert found.offset == late
        # syncnet_python's calc_pdist, literally: distances to the zero-padded sound, then the mean per lag
        padded = torch.nn.functional.pad(sound, (0, 0, 15, 15))
        dists = [torch.nn.functional.pairwise_distance(lips[[i], :].repeat(31, 1), padded[i:i + 31, :])
                 for i in range(40)]
        mean = torch.mean(torch.stack(dists, 1), 1)
        torch.testing.assert_close(found.distances, mean)
        assert found.lse_d == pytest.approx(float(mean.min()))
        assert found.lse_c == pytest.approx(float(torch.median(mean) - mean.min()))
        assert 15 - int(mean.argmin()) == -late  # syncnet_python's printed "AV offset" has the other sign


def test_frames_are_25_fps_bgr_centre_squares():
    video = torch.full((3, 16, 20, 30), -1.0)
    video[0, :, :, 5:25] = 1.0  # pure red in the centred 20 x 20 square, black margins left and right
    for f in range(16):
        video[1, f, 0, 5] = f / 16  # a frame marker in the green channel
    frames = face_frames(video, fps=16)
    assert frames.shape == (3, 25, 224, 224)  # 16 frames at 16 fps: 1 s, 25 frames at 25 fps
    assert frames[0].max() == 0 and frames[2].min() == 255  # BGR: red is the last channel
    shown = [math.floor(j * 16 / 25) for j in range(25)]  # the frame on screen at j / 25 s
    assert frames[1, :, 0, 0].tolist() == [round((f / 16 + 1) * 127.5) for f in shown]


def test_a_file_that_is_not_syncnet_is_one_line_naming_it(tmp_path):
    wrong = write_i3d(tmp_path / "rgb_imagenet.pt")
    for path, message in ((wrong, "not a SyncNet weight file"), (tmp_path / "missing.model", "file not found")):
        with pytest.raises(ValueError, match=message) as error:
            load_syncnet(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.model"):
        load_syncnet(junk)
    partial = tmp_path / "partial.model"
    torch.save({k: v for k, v in SyncNet().state_dict().items() if not k.startswith("netfclip")}, partial)
    with pytest.raises(ValueError, match=r"missing 8 \['netfclip.0.weight'"):
        load_syncnet(partial)


@pytest.mark.parametrize("legacy", [True, False])
def test_a_crafted_weight_file_is_refused_without_running_it(tmp_path, legacy):
    marker, path = tmp_path / "RAN", tmp_path / "syncnet_v2.model"
    torch.save({"netcnnaud.0.weight": torch.ones(2), "payload": Payload(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match=rf"{path}: .*could run code"):
        load_syncnet(path)
    assert not marker.exists()
