"""Reference-to-video through train.py's run(cfg) and generate.py's run(cfg) on the CPU: recipe=r2v on the
quickstart's base trains the reference slots (full fine-tune, or beside a LoRA), the run folder generates with
task=r2v refs=[...], and prompts may only tag the references given."""

import json

import pytest
import torch
from PIL import Image, ImageDraw

from data_tools.make_demo import DemoClip, make_demo, render
from tests.helpers import randomize_
from wan_train.config import ConfigError, compose_config, compose_generate_config
from wan_train.inference.cli import run as generate
from wan_train.inference.outputs import write_mp4
from wan_train.models import WanDiT, get_size, save_dit
from wan_train.training.run import run


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_demo(root / "train", num_clips=6, seed=0, width=256, height=144, frames=25, fps=16.0, shard_size=3,
              subjects=True)
    make_demo(root / "multi", num_clips=2, seed=2, width=256, height=144, frames=25, fps=16.0, shard_size=2,
              subjects=True, multi=True)
    make_demo(root / "val", num_clips=1, seed=1, width=256, height=144, frames=25, fps=16.0, shard_size=1,
              subjects=True)
    torch.manual_seed(0)
    save_dit(randomize_(WanDiT(get_size("quickstart").dit), seed=3), root / "base")
    picture = Image.new("RGB", (64, 64))
    ImageDraw.Draw(picture).ellipse((12, 12, 52, 52), fill=(220, 40, 40))
    picture.save(root / "red_circle.png")
    return root


def config(shapes, run_dir, **overrides):
    values = {"model": "quickstart", "data": "shapes", "trainer": "cpu", "model.checkpoint": str(shapes / "base"),
              "data.shards": f"[{shapes / 'train'},{shapes / 'multi'}]", "data.val_shards": f"[{shapes / 'val'}]",
              "data.durations": "[0.5]", "run_dir": str(run_dir), "trainer.max_steps": "3",
              "trainer.val_every_n_steps": "3", "trainer.checkpoint_every_n_steps": "3", "optim.lr": "1e-2",
              "trainer.enable_progress_bar": "false", "flow.held_out_samples": "1", "flow.held_out_quantiles": "2",
              "logger.wandb": "false"}
    values.update(overrides)
    return compose_config(["recipe=r2v", *(f"{k}={v}" for k, v in values.items())])


def generate_config(run_dir, shapes, out, **overrides):
    values = {"ckpt": str(run_dir), "task": "r2v", "refs": f"[{shapes / 'red_circle.png'}]",
              "prompt": "'@Video1 moves from top to bottom on a black background'", "steps": "2",
              "num_frames": "5", "out": str(out), "preview": "none"}
    values.update(overrides)
    return compose_generate_config([f"{k}={v}" for k, v in values.items()])


def trained_slots(run_dir) -> torch.Tensor:
    state = torch.load(run_dir / "checkpoints" / "step=0000003.ckpt", weights_only=True)["state_dict"]
    return state["dit.reference_embedding"]


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("r2v_run") / "run"
    metrics = run(config(shapes, run_dir))
    assert metrics["step"] == 3 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    return run_dir


def test_r2v_run_trains_the_reference_slots_and_generates_with_references(shapes, trained, tmp_path):
    slots = trained_slots(trained)
    assert slots.shape == (3, 256) and slots[:2].abs().sum() > 0  # the data's two slots trained away from zero
    saved = generate(generate_config(trained, shapes, tmp_path / "video.mp4"))
    meta = json.loads(saved[0].metadata.read_text())
    assert saved[0].video.is_file() and meta["task"] == "r2v" and meta["refs"] == [str(shapes / "red_circle.png")]
    with pytest.raises(ValueError, match="tags @Video2 with no matching reference; 1 reference given"):
        generate(generate_config(trained, shapes, tmp_path / "bad.mp4", prompt="'@Video1 meets @Video2'"))
    with pytest.raises(ValueError, match="refs=.* were given for task=t2v"):
        generate(generate_config(trained, shapes, tmp_path / "bad.mp4", task="t2v"))
    # a clip reference: 5 consecutive frames at the output's 16 fps, from reference_start
    clip = DemoClip(shape="square", colour="blue", background="beige", direction="from left to right", size="large",
                    offset=0.5, width=128, height=96)
    write_mp4(tmp_path / "square.mp4", render(clip, frames=12), fps=24.0)  # 0.5 s
    two = f"[{shapes / 'red_circle.png'},{tmp_path / 'square.mp4'}]"
    saved = generate(generate_config(trained, shapes, tmp_path / "two.mp4", refs=two, reference_frames=5,
                                     reference_start=0.2, prompt="'@Video1 meets @Video2 on a black background'"))
    assert saved[0].video.is_file()
    with pytest.raises(ValueError, match=r"square\.mp4: 12 frames at 24 fps \(0\.50 s\) do not hold 5 frames"):
        generate(generate_config(trained, shapes, tmp_path / "bad.mp4", refs=two, reference_frames=5,
                                 reference_start=0.3, prompt="'@Video1 meets @Video2'"))


def test_r2v_with_lora_trains_the_slots_beside_the_adapter(shapes, tmp_path):
    run(config(shapes, tmp_path / "run", lora="default", **{"lora.rank": "4", "lora.alpha": "4"}))
    state = torch.load(tmp_path / "run" / "checkpoints" / "step=0000003.ckpt", weights_only=True)["state_dict"]
    assert "dit.reference_embedding" in state and all(".lora_" in k or k.endswith("reference_embedding")
                                                      for k in state)
    assert trained_slots(tmp_path / "run").abs().sum() > 0
    saved = generate(generate_config(tmp_path / "run", shapes, tmp_path / "video.mp4"))  # base + adapter + slots
    assert saved[0].video.is_file()


def test_r2v_settings_are_checked_at_start(shapes, tmp_path):
    from wan_train.config import validate

    with pytest.raises(ConfigError, match="data.references=3: the model has model.references=1"):
        validate(config(shapes, tmp_path, **{"model.references": "1"}))
    with pytest.raises(ConfigError, match="registry's LoRA formats cannot carry the embeddings"):
        validate(config(shapes, tmp_path, lora="default", **{"lora.client": "acme", "lora.name": "cloner"}))
    with pytest.raises(ConfigError, match="model.references=4"):
        validate(config(shapes, tmp_path, **{"model.references": "4"}))


def test_reference_index_crops_feed_the_identity_evaluation(shapes, trained, tmp_path):
    from data_tools import reference_index
    from data_tools.make_demo import COLOURS
    from data_tools.make_eval_models import write_dinov2
    from eval import r2v_identity

    index = tmp_path / "refs.json"
    assert reference_index.main([str(shapes / "val"), "--frames", "9", "--output", str(index),
                                 "--crops", str(tmp_path / "crops")]) == 0
    entry = json.loads(index.read_text())["entries"][0]
    assert entry["prompt"].startswith("@Video1 moves") and len(entry["crops"]) == 1
    crop = torch.tensor(list(Image.open(entry["crops"][0]).getdata()), dtype=torch.float32)
    colour = torch.tensor(COLOURS[entry["subjects"][0].split()[2]], dtype=torch.float32)
    assert (crop - colour).norm(dim=1).lt(40).float().mean() > 0.3  # the crop is mostly the subject
    assert r2v_identity.new_motion("@Video1 moves from left to right and @Video2 moves from top to bottom") == \
        "@Video1 moves from right to left and @Video2 moves from bottom to top"
    assert entry["names"] == entry["subjects"]  # one subject: @Video1's
    assert r2v_identity.untag(entry["prompt"], entry, untagged="a shape", named=False).startswith("a shape moves")
    assert r2v_identity.untag(entry["prompt"], entry, untagged="a shape", named=True).startswith(
        f"{entry['subjects'][0]} moves")
    two = {"key": "k", "subjects": ["a red circle", "a blue square"], "names": ["a blue square", "a red circle"]}
    assert r2v_identity.untag("@Video2 meets @Video1", two, untagged="", named=True) == \
        "a red circle meets a blue square"
    with pytest.raises(ValueError, match="k: the index does not say which"):  # an index from before "names"
        r2v_identity.untag("@Video1", {"key": "k", "subjects": two["subjects"]}, untagged="", named=True)
    out = tmp_path / "identity.json"
    assert r2v_identity.main([str(trained), "--index", str(index), "--image-model", str(write_dinov2(tmp_path / "d")),
                              "--steps", "2", "--frames", "5", "--out", str(out), "--videos", str(tmp_path / "v")]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "r2v" and result["metric"] == "dino_i" and len(result["samples"]) == 1
    assert result["samples"][0]["prompt"] == r2v_identity.new_motion(entry["prompt"]) != entry["prompt"]
    assert -1 <= result["mean_identity"] <= 1
    form = result["samples"][0]["per_reference_form"][0]
    assert set(form) == {"coherence", "shape_iou", "form"} and 0 <= result["mean_form"] <= 1
    motion = result["samples"][0]["per_reference_motion"][0]
    assert set(motion) == {"along", "across"} and result["mean_along"] == result["samples"][0]["along"]
    assert result["prompted_way"] == (motion["along"] > 0)
    assert sorted(p.suffix for p in (tmp_path / "v").iterdir()) == [".json", ".mp4", ".png"]


def test_caption_swap_reads_a_run_folder(shapes, trained, tmp_path, capsys):
    from eval import caption_swap

    out = tmp_path / "swap.json"
    assert caption_swap.main([str(trained), "--shards", str(shapes / "val"), "--swap", "red=blue", "--swap",
                              "from left to right=from right to left", "--frames", "9", "--fps", "8",
                              "--sigmas", "0.5", "1", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["clips"] == 1 and result["sigmas"] == [0.5, 1.0] and result["skipped"] == {}
    assert [entry["swap"] for entry in result["swaps"]] == ["red=blue", "from left to right=from right to left"]
    assert "loss, own captions" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        caption_swap.main([str(trained), "--shards", str(shapes / "val"), "--swap", "red=blue", "--frames", "8"])


def test_r2v_on_one_a14b_expert_trains_its_slots_and_generates_with_both_experts(shapes, tmp_path):
    from tests.helpers import write_official_folder

    encoders, base = tmp_path / "Wan-tiny", tmp_path / "Wan-tiny-moe"
    encoders.mkdir()
    write_official_folder(encoders)  # the tiny Wan VAE and umT5 the raw-video batches are encoded with
    for seed, expert in enumerate(("high_noise", "low_noise")):
        save_dit(randomize_(WanDiT(get_size("tiny-moe").dit), seed=seed), base / f"{expert}_model")
    run(config(shapes, tmp_path / "run", lora="default", expert="low_noise", **{
        "model": "tiny", "model.size": "tiny-moe", "model.checkpoint": str(base), "model.encoders": str(encoders),
        "lora.rank": "4", "lora.alpha": "4"}))
    state = torch.load(tmp_path / "run" / "checkpoints" / "step=0000003.ckpt", weights_only=True)["state_dict"]
    assert state["dit.reference_embedding"].abs().sum() > 0
    # the high-noise expert comes from the base without slots and runs text-to-video; the low-noise one uses them
    saved = generate(generate_config(tmp_path / "run", shapes, tmp_path / "video.mp4", height="144", width="256"))
    assert saved[0].video.is_file()
