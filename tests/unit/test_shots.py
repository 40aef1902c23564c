"""Multi-shot: the prompt parsing rules are the module's own examples (run here as doctests); the shot extension
of the DiT starts at the base model, is recorded in checkpoints, and its cross-attention mask lets a shot's tokens
see only their own caption and the global one."""

import copy
import doctest
import json

import pytest
import torch

import wan_train.inference.shots as shots_module
from tests.helpers import dit_inputs, randomize_
from wan_train.inference.shots import parse_shots, plan_shots, prompt_shots, shot_frames
from wan_train.models import ShotLayout, WanDiT, get_size, load_dit, save_dit


def test_prompt_parsing_is_documented_by_examples_that_run():
    failures, tried = doctest.testmod(shots_module, optionflags=doctest.ELLIPSIS)
    assert tried >= 10 and failures == 0


def test_prompt_parsing_details():
    plan = parse_shots("Shot 1 (2.5s): medium shot - a man waits. Shot 2: he leaves.")
    assert [(s.kind, s.caption, s.seconds) for s in plan.shots] == [("medium shot", "a man waits.", 2.5),
                                                                    (None, "he leaves.", None)]
    assert plan.global_caption == ""
    assert prompt_shots("Shot 1: a. Shot 2: b.").shots == parse_shots("Shot 1: a. Shot 2: b.").shots
    assert prompt_shots("A cat sits. Cut to a dog barking.").shots[1].caption == "a dog barking."
    with pytest.raises(ValueError, match="Shot 2 has no description"):
        parse_shots("Shot 1: a cat. Shot 2:")
    with pytest.raises(ValueError, match="no 'Shot 1:' marker"):
        parse_shots("a cat")
    assert [len(s.caption.split(". ")) for s in plan_shots("A. B. C. D. E.", shots=2).shots] == [3, 2]
    assert len(plan_shots("A. Then B. Then C. Then D.", shots=2).shots) == 2
    frames = shot_frames(parse_shots("Shot 1: a. Shot 2: b. Shot 3: c."), num_frames=81, fps=16)
    assert all((f - 1) % 4 == 0 and f >= 5 for f in frames) and sum(frames) <= 81
    with pytest.raises(ValueError, match="3 shots need at least 15 frames"):
        shot_frames(parse_shots("Shot 1: a. Shot 2: b. Shot 3: c."), num_frames=9, fps=16)


def base():
    torch.manual_seed(0)
    return randomize_(WanDiT(get_size("tiny").dit)).eval()


def layout(inputs, *, frame_shots=(0, 1, 1), text_shots=None):
    b, s = inputs["context"].shape[:2]
    text = torch.full((b, s), -1) if text_shots is None else torch.tensor(text_shots).expand(b, -1)
    return ShotLayout(torch.tensor(frame_shots).expand(b, -1), text)


def test_zero_initialised_shot_extension_leaves_the_base_output_unchanged():
    model = base()
    extension = copy.deepcopy(model).extend_shots(4)
    assert not extension.shot_embedding.any()
    inputs = dit_inputs(model.config)  # 3 latent frames
    with torch.no_grad():
        plain = model(**inputs)
        assert torch.equal(extension(**inputs), plain)
        # one shot layout whose captions are all global: the mask admits every text token, the embedding is zero
        torch.testing.assert_close(extension(**inputs, shots=layout(inputs)), plain, rtol=0, atol=1e-6)


def test_the_checkpoint_records_the_shot_extension(tmp_path):
    model = copy.deepcopy(base()).extend_shots(4)
    torch.nn.init.normal_(model.shot_embedding)
    path = save_dit(model, tmp_path / "dit")
    assert json.loads((path / "config.json").read_text())["shots"] == 4
    loaded = load_dit(path)
    assert loaded.config.shots == 4 and torch.equal(loaded.shot_embedding, model.shot_embedding)


def test_a_shots_tokens_see_only_their_caption_and_the_global_one():
    model = copy.deepcopy(base()).extend_shots(2)
    inputs = dit_inputs(model.config, prompt_lens=(9, 9))
    # context tokens: 0-2 global, 3-5 shot 0's caption, 6-8 shot 1's caption; frames 0 | 1, 2
    text_shots = [-1, -1, -1, 0, 0, 0, 1, 1, 1]
    shots = layout(inputs, frame_shots=(0, 1, 1), text_shots=text_shots)
    tokens = 3 * 5  # per latent frame
    token_shots = shots.frame_shots.repeat_interleave(tokens, dim=1)
    mask = model.shot_cross_mask(token_shots, shots.text_shots)[0, 0]  # [L, 512]
    assert mask[:tokens, :9].tolist() == [[True] * 3 + [True] * 3 + [False] * 3] * tokens
    assert mask[tokens:, :9].tolist() == [[True] * 3 + [False] * 3 + [True] * 3] * (2 * tokens)
    assert mask[:, 9:].all()  # the padding is global, as the base attends it
    # behaviour: changing shot 1's caption changes what shot 1's tokens read, and nothing of shot 0's
    cross = model.blocks[0].cross_attn
    x = torch.randn(2, 3 * tokens, model.config.dim)
    context = model.embed_text(inputs["context"])
    changed = inputs["context"].clone()
    changed[:, 6:9] += 1.0
    with torch.no_grad():
        out = cross(x, context, mask_B1LT=model.shot_cross_mask(token_shots, shots.text_shots))
        other = cross(x, model.embed_text(changed), mask_B1LT=model.shot_cross_mask(token_shots, shots.text_shots))
    assert torch.equal(out[:, :tokens], other[:, :tokens]) and (out[:, tokens:] - other[:, tokens:]).abs().max() > 1e-4


def test_shot_inputs_are_checked():
    model = copy.deepcopy(base()).extend_shots(2)
    inputs = dit_inputs(model.config)
    with pytest.raises(ValueError, match="shot indices 0..1"):
        model(**inputs, shots=layout(inputs, frame_shots=(0, 1, 2)))
    with pytest.raises(ValueError, match="must not decrease"):
        model(**inputs, shots=layout(inputs, frame_shots=(1, 0, 1)))
    with pytest.raises(ValueError, match="no multi-shot extension"):
        base()(**inputs, shots=layout(inputs))


def test_generate_denoises_the_shots_jointly_and_decodes_each_on_its_own():
    from wan_train.inference.pipeline import WanModels, generate
    from wan_train.inference.presets import official
    from wan_train.models import builtin_text_encoder, builtin_vae

    torch.manual_seed(0)
    dit = randomize_(WanDiT(get_size("quickstart").dit)).extend_shots(2).eval()
    models = WanModels({None: dit}, builtin_vae(), builtin_text_encoder(text_dim=4096), size="quickstart")
    settings = official("quickstart").replace(steps=2, num_frames=17)
    prompt = "A park at noon. Shot 1: wide — a red ball rolls. Shot 2: close-up — the ball stops."
    video = generate(models, [prompt], settings=settings, multishot=True)
    assert video.shape[2] == sum(shot_frames(parse_shots(prompt), num_frames=17, fps=settings.fps)) == 14
    latents = generate(models, [prompt], settings=settings, multishot=True, decode=False)
    assert latents.shape[2] == 3 + 2  # shots of 9 and 5 frames: 1 + 8 / 4 and 1 + 4 / 4 latent frames
    plain = generate(models, ["a red ball rolls"], settings=settings)  # the same model, one shot, text-to-video
    assert plain.shape[2] == 17
    with pytest.raises(ValueError, match="plan different shot lengths"):
        generate(models, [prompt, "Shot 1 (0.3s): a. Shot 2: b."], settings=settings, multishot=True)
    with pytest.raises(ValueError, match="no multi-shot extension"):
        generate(WanModels({None: base()}, builtin_vae(), builtin_text_encoder(text_dim=4096)), [prompt],
                 settings=settings.replace(width=80, height=48), multishot=True)


def test_cut_detection_finds_a_hard_cut():
    from eval.cuts import cuts_at, detected_cuts, frame_differences, requested_cuts

    video = torch.zeros(3, 14, 8, 8)
    video[:, 9:] = 1.0  # shot 2 starts at frame 9
    video += 0.01 * torch.randn_like(video)
    assert frame_differences(video).argmax() == 8 and detected_cuts(video, 1) == [9]
    assert requested_cuts([9, 5]) == [9] and cuts_at(video, [9]) and not cuts_at(video, [7])
    assert cuts_at(video, [8], tolerance=1)
