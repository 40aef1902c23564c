"""eval.av_demo's per-clip scores on make_av_demo's own clips (lossless: its rendered frames and its sound): a clip
is in sync with every flash's pitch right; its sound moved by k frames has offset k; another clip's sound (other
times, other pitches) is out of sync."""

import numpy as np
import torch

from data_tools.make_av_demo import PITCHES, av_clip, render, sound
from eval.av_demo import colour_pitch, flashes, score_clip, summarise, table

FPS, RATE, FRAMES = 16.0, 16000, 33


def clip(index: int, *, two_shapes: float = 0.5):
    c = av_clip(seed=3, index=index, width=256, height=144, frames=FRAMES, two_shapes=two_shapes)
    video = torch.from_numpy(render(c, frames=FRAMES)).permute(3, 0, 1, 2).float() / 127.5 - 1
    return c, video, torch.from_numpy(sound(c, frames=FRAMES, fps=FPS))


def test_the_demos_own_clips_are_in_sync_with_every_pitch_right():
    for index in range(6):
        c, video, audio = clip(index)
        assert [f for f, _ in flashes(video)] == sorted(e.frame for e in c.events)
        scores = score_clip(video, audio, fps=FPS, sample_rate=RATE, pitches=PITCHES)
        assert scores["offset"] == 0 and scores["in_sync"]
        assert scores["colour_pitch_right"] == scores["flashes"] == len(c.events)
        assert scores["onset_f1"] == 1.0


def test_a_late_or_foreign_sound_is_out_of_sync():
    c, video, audio = clip(1)
    late = torch.cat([torch.zeros(round(4 / FPS * RATE)), audio])[:audio.numel()]
    scores = score_clip(video, late, fps=FPS, sample_rate=RATE, pitches=PITCHES)
    assert scores["offset"] == 4 and not scores["in_sync"]
    # another clip's sound: other times (each over 2 frames from every flash); colour -> pitch only right where the colours happen to agree
    for other in range(2, 12):
        o, _, foreign = clip(other)
        if all(abs(a.frame - b.frame) > 2 for a in o.events for b in c.events):
            break
    scores = score_clip(video, foreign, fps=FPS, sample_rate=RATE, pitches=PITCHES)
    assert scores["onset_f1"] == 0.0
    right, count = colour_pitch(video, torch.zeros_like(audio), fps=FPS, sample_rate=RATE, pitches=PITCHES)
    assert right == 0 and count == len(c.events)  # silence is never the right pitch


def test_the_summary_and_its_table():
    clips = [{"offset": 0, "in_sync": True, "onset_f1": 1.0, "av_align": 1.0, "colour_pitch_right": 2, "flashes": 2},
             {"offset": None, "in_sync": False, "onset_f1": 0.0, "av_align": 0.0, "colour_pitch_right": 0,
              "flashes": 0},
             {"offset": -5, "in_sync": False, "onset_f1": 0.5, "av_align": 0.2, "colour_pitch_right": 1,
              "flashes": 2}]
    summary = summarise(clips)
    assert summary["in_sync"] == 1 / 3 and summary["median_abs_offset"] == 5 and summary["colour_pitch"] == 0.75
    assert np.isclose(summary["onset_f1"], 0.5)
    assert "| fusion | 0.33 | 5 | 0.50 | 0.40 | 0.75 (4 flashes) | 3 |" in table({"fusion": summary})
