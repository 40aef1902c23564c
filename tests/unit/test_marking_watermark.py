"""The invisible watermark and `verify`: a marked video keeps its mark and output id through what platforms do to it
(H.264 re-encoding drops the C2PA manifest and the tags, the watermark stays), at >= 40 dB PSNR; unmarked videos and
wrong keys read as unmarked; the CLI's exit status says marked (0), unmarked (1), tampered or unreadable (2).
The robustness table over many clips and transforms is benchmarks/watermark.py."""

import io
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from data_tools.make_demo import demo_clip, render
from wan_train.inference.outputs import encode_mp4, save_video
from wan_train.marking import Marker
from wan_train.marking import watermark as wm
from wan_train.marking.keys import installation_key, key_id
from wan_train.marking.manifest import read_manifest
from wan_train.marking.verify import read_frames, verify

ROOT = Path(__file__).resolve().parents[2]


def demo(index: int, frames: int = 33, width: int = 256, height: int = 144) -> np.ndarray:
    return render(demo_clip(seed=3, index=index, width=width, height=height), frames=frames)


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_crc8_is_the_standard_one():
    assert wm.crc8(b"123456789") == 0xF4  # CRC-8/SMBUS check value


def test_the_mark_is_invisible_and_survives_re_encoding_with_its_id():
    clip = demo(0)
    marked = wm.embed(clip, "studio key", 0xC0FFEE42)
    assert wm.psnr(clip, marked) >= 40
    again = decode(encode_mp4(marked, fps=16, crf=28))
    found = wm.detect(again, "studio key")
    assert found.marked and found.payload == 0xC0FFEE42 and found.scale == 1.0, found.as_dict()
    assert not wm.detect(again, "another key").marked
    assert not wm.detect(decode(encode_mp4(clip, fps=16, crf=28)), "studio key").marked


def test_the_mark_is_found_in_a_cropped_and_in_a_half_size_copy():
    clip = demo(1, width=512, height=288)
    marked = wm.embed(clip, "k", 0x12345678)
    cropped = decode(encode_mp4(marked[:, 14:14 + 258, 26:26 + 460], fps=16, crf=23))  # 10 % off, off-centre
    found = wm.detect(cropped, "k")
    assert found.marked and found.payload == 0x12345678, found.as_dict()
    half = torch.nn.functional.interpolate(torch.from_numpy(marked).permute(0, 3, 1, 2).float(), size=(144, 256),
                                           mode="bilinear", antialias=True, align_corners=False)
    small = decode(encode_mp4(half.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy(), fps=16, crf=23))
    found = wm.detect(small, "k")
    assert found.marked and abs(found.scale - 0.5) < 0.01 and found.payload == 0x12345678, found.as_dict()


def test_a_saved_video_loses_its_manifest_when_re_encoded_and_keeps_its_watermark(tmp_path):
    video = torch.from_numpy(demo(2)).permute(3, 0, 1, 2).float() / 127.5 - 1
    # a fixed key: the installation's is new in every test session, and the id's margin depends on the key
    marker = Marker(key="studio key")
    saved = save_video(tmp_path / "fox.mp4", video, fps=16, metadata={"prompt": "a fox", "seed": 3}, marker=marker)
    record = json.loads(saved.metadata.read_text())["provenance"]
    installation_key()  # this machine has its own key too (made on first use): verify tries both
    report = verify(saved.video, keys=["studio key"])
    assert report.verdict == "marked" and report.c2pa.state == "Valid" and report.metadata == record
    assert list(report.watermarks) == [key_id("studio key"), key_id(installation_key())]  # given, then this machine's
    mark = report.watermarks[key_id("studio key")]
    assert key_id("studio key") == record["marking"]["watermark"]["key_id"]
    assert mark.marked and f"{mark.payload:08x}" == record["output_id"]
    assert not report.watermarks[key_id(installation_key())].marked

    copy = tmp_path / "reposted.mp4"
    copy.write_bytes(encode_mp4(read_frames(saved.video), fps=16, crf=28))
    assert read_manifest(copy).state == "absent"
    report = verify(copy, keys=["studio key"])
    assert report.verdict == "marked" and report.metadata is None and report.c2pa.state == "absent"
    mark = report.watermarks[key_id("studio key")]
    assert mark.marked and f"{mark.payload:08x}" == record["output_id"]
    assert f"payload {record['output_id']}" in report.text()


def verify_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wan_train.marking", "verify", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_verify_exit_status_and_one_line_errors(tmp_path):
    plain = tmp_path / "camera.mp4"
    plain.write_bytes(encode_mp4(demo(3, frames=9), fps=16))
    result = verify_cli(plain)
    assert result.returncode == 1 and "no AI mark found" in result.stdout, result.stdout + result.stderr
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    result = verify_cli(broken)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and str(broken) in result.stderr
    result = verify_cli(tmp_path / "missing.mp4")
    assert result.returncode == 2 and "missing.mp4: no such file" in result.stderr


def test_marking_settings_are_checked():
    from omegaconf import OmegaConf

    from wan_train.config.schema import MarkingConfig

    cfg = OmegaConf.structured(MarkingConfig)
    cfg.c2pa.sign_cert = "me.pem"
    with pytest.raises(ValueError, match="sign_cert and marking.c2pa.private_key go together"):
        Marker.from_config(cfg)
    cfg = OmegaConf.structured(MarkingConfig)
    cfg.watermark.strength = 0
    with pytest.raises(ValueError, match="marking.watermark.strength=0"):
        Marker.from_config(cfg)


def mux(frames: np.ndarray, sound: np.ndarray, rate: int, *, crf: int, bit_rate: int = 64000) -> bytes:
    """An mp4 of H.264 pictures and an AAC sound track (mono), as a platform re-encodes an upload."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=16)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.options = {"crf": str(crf)}
        audio = container.add_stream("aac", rate=rate)
        audio.bit_rate, audio.layout = bit_rate, "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound, dtype=np.float32), format="fltp", layout="mono")
        chunk.sample_rate = rate
        container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))
    return buffer.getvalue()


def test_a_sound_track_carries_the_same_id_through_aac(tmp_path):
    rate, rng = 16000, np.random.default_rng(0)
    t = np.arange(rate * 3) / rate
    voice = sum(np.sin(2 * np.pi * k * 150 * t) / k for k in range(1, 20)) * (np.sin(2 * np.pi * 3 * t) > 0)
    sound = (0.2 * voice / np.abs(voice).max() + 0.01 * rng.standard_normal(t.size))[None]
    marker = Marker(key="studio key")
    record = {"output_id": "0badc0de"}
    marked = marker.watermark_sound(sound, rate, record)
    assert 10 * np.log10((sound**2).sum() / ((marked - sound) ** 2).sum()) > 19  # the mark is 20 dB below the sound
    path = tmp_path / "reposted.mp4"
    path.write_bytes(mux(demo(4, frames=48), marked, rate, crf=28))
    report = verify(path, keys=["studio key"])
    heard = report.sound[key_id("studio key")]
    assert report.verdict == "marked" and heard.marked and heard.payload == 0x0BADC0DE, heard.as_dict()
    assert "sound      key" in report.text()
    plain = tmp_path / "plain.mp4"
    plain.write_bytes(mux(demo(4, frames=48), sound, rate, crf=28))
    assert not verify(plain, keys=["studio key"]).sound[key_id("studio key")].marked
