"""The reference-to-video extension of the DiT: zero-initialised slots leave a base model's output unchanged, the
checkpoint records the extension, reference tokens are clean (t = 0) and have no output (so no loss), 1-3
references work and a 4th is refused, prompts may only tag references that were given, and the guidance over
text and references is Phantom's three-branch formula."""

import copy
import json

import pytest
import torch

from tests.helpers import dit_inputs, randomize_
from wan_train.inference.pipeline import Conditioning, guided_velocity
from wan_train.inference.references import check_tags, prompt_tags
from wan_train.models import CheckpointError, WanDiT, get_size, load_dit, save_dit
from wan_train.models.dit.model import timestep_sinusoid


def base(name="tiny"):
    torch.manual_seed(0)
    return randomize_(WanDiT(get_size(name).dit)).eval()


def extended(model, count=3, *, seed=1):
    out = copy.deepcopy(model).extend_references(count)
    torch.nn.init.normal_(out.reference_embedding, std=0.5, generator=torch.Generator().manual_seed(seed))
    return out


def refs(frames=(1,), *, batch=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 16, f, 6, 10, generator=g) for f in frames]


@pytest.mark.parametrize("name", ["tiny", "tiny-ti2v"])
def test_zero_initialised_extension_leaves_the_base_output_unchanged(name):
    model = base(name)
    extension = copy.deepcopy(model).extend_references(3)
    assert extension.config.references == 3 and not extension.reference_embedding.any()
    inputs = dit_inputs(model.config, per_token_t=name == "tiny-ti2v")
    with torch.no_grad():
        assert torch.equal(extension(**inputs), model(**inputs))


@pytest.mark.parametrize("layout", ["official", "diffusers", "single"])
def test_the_checkpoint_records_the_extension_and_load_dit_reads_it(tmp_path, layout):
    model = extended(base())
    if layout == "single":
        from safetensors.torch import save_file
        path = tmp_path / "dit.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    else:
        path = save_dit(model, tmp_path / layout, layout=layout)
        assert json.loads((path / "config.json").read_text())["references"] == 3
    loaded = load_dit(path)
    assert loaded.config == model.config and torch.equal(loaded.reference_embedding, model.reference_embedding)
    plain = save_dit(base(), tmp_path / "plain")
    assert "references" not in json.loads((plain / "config.json").read_text())  # official files stay official


def test_a_config_that_disagrees_with_the_weights_is_refused(tmp_path):
    path = save_dit(extended(base()), tmp_path / "dit")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "references": 2}))
    with pytest.raises(CheckpointError, match="references=2, but the weights hold 3 rows of reference_embedding"):
        load_dit(path)


def test_reference_tokens_get_timestep_zero_and_video_tokens_theirs():
    model = extended(base())
    inputs = dit_inputs(model.config)
    seen = []
    model.time_projection.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(**inputs, refs=refs((1, 2)))
        e = seen[0]  # [B, L, D]: the time embedding of every token
        video_tokens, ref_tokens = 3 * 3 * 5, 3 * 3 * 5
        assert e.shape[1] == video_tokens + ref_tokens
        zero = model.time_embedding(timestep_sinusoid(torch.zeros(1), model.config.freq_dim).float())
        own = model.time_embedding(timestep_sinusoid(inputs["t"], model.config.freq_dim).float())
    # equal up to the round-off of differently shaped matmuls; t = 0 and the video's t are far apart
    torch.testing.assert_close(e[:, video_tokens:], zero.expand(2, ref_tokens, -1), rtol=0, atol=1e-5)
    torch.testing.assert_close(e[:, :video_tokens], own[:, None].expand(-1, video_tokens, -1), rtol=0, atol=1e-5)
    assert (own - zero).abs().max() > 0.1


def test_references_have_no_output_but_steer_the_video_through_their_slots():
    model = extended(base())
    inputs = dit_inputs(model.config)
    a, b = refs((1, 1))
    with torch.no_grad():
        out = model(**inputs, refs=[a, b])
        swapped = model(**inputs, refs=[b, a])
        alone = model(**inputs)
    assert out.shape == inputs["x"].shape  # the video's frames only: nothing of the references reaches a loss
    assert (out - alone).abs().max() > 1e-4  # the video attends to the references
    assert (out - swapped).abs().max() > 1e-4  # which subject is @Video1 matters: slots tell them apart


@pytest.mark.parametrize("count", [1, 2, 3])
def test_one_two_and_three_references_work(count):
    model = extended(base())
    inputs = dit_inputs(model.config)
    with torch.no_grad():
        out = model(**inputs, refs=refs((1, 2, 1)[:count]))
    assert out.shape == inputs["x"].shape and out.isfinite().all()


def test_a_fourth_reference_is_refused():
    model = extended(base())
    with pytest.raises(ValueError, match="4 references given; this model has 3 reference slots"):
        model(**dit_inputs(model.config), refs=refs((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="references=4 must be in 0..3"):
        get_size("tiny").dit.replace(references=4)
    with pytest.raises(ValueError, match="no reference extension"):
        base()(**dit_inputs(base().config), refs=refs())
    with pytest.raises(ValueError, match="4 references given: at most 3"):
        check_tags(["@Video1"], 4)


def test_tags_without_a_matching_reference_are_refused():
    assert prompt_tags("@Video2 waves at @Video1 and @Video2") == [1, 2]
    check_tags(["@Video1 waves at @Video2", "a plain prompt"], 2)
    with pytest.raises(ValueError, match="tags @Video3 with no matching reference; 2 references given"):
        check_tags(["@Video1 and @Video3 dance"], 2)
    with pytest.raises(ValueError, match="pass refs=.* with task=r2v"):
        check_tags(["@Video1 walks"], 0)


def test_guidance_over_text_and_references_is_the_three_branch_formula():
    model = extended(base())
    inputs = dit_inputs(model.config)
    x, t, context = inputs["x"], inputs["t"], inputs["context"]
    negative = torch.randn(1, 4, 4096, generator=torch.Generator().manual_seed(9))
    references = refs((1, 2))
    with torch.no_grad():
        v = guided_velocity(model, x, t, context, negative, Conditioning(refs=references), 3.0, 2.0)
        padded = torch.nn.functional.pad(negative, (0, 0, 0, context.shape[1] - 4)).expand(2, -1, -1)
        v_0 = model(x, t, padded, refs=[torch.zeros_like(r) for r in references])
        v_r = model(x, t, padded, refs=references)
        v_rt = model(x, t, context, refs=references)
    torch.testing.assert_close(v, v_0 + 2.0 * (v_r - v_0) + 3.0 * (v_rt - v_r), rtol=1e-5, atol=1e-5)


def test_an_expert_without_reference_slots_runs_text_to_video_beside_one_with_them():
    """An A14B run that trained one expert with references: the other expert ignores them."""
    from wan_train.inference.pipeline import WanModels
    from wan_train.models import builtin_text_encoder, builtin_vae

    plain, with_slots = base(), extended(base())
    models = WanModels({"high_noise": plain, "low_noise": with_slots}, builtin_vae(), builtin_text_encoder(text_dim=4096),
                       boundary=0.875)
    assert "r2v" in models.tasks
    inputs = dit_inputs(plain.config)
    x, t, context = inputs["x"], inputs["t"], inputs["context"]
    negative = torch.zeros(1, 4, 4096)
    with torch.no_grad():
        ignored = guided_velocity(plain, x, t, context, negative, Conditioning(refs=refs()), 3.0, 2.0)
        text_only = guided_velocity(plain, x, t, context, negative, Conditioning(), 3.0)
    assert torch.equal(ignored, text_only)
