"""Strict keys: an override or an added key that no schema declares is refused with the closest valid keys; keys
below free-form fields are the user's; local shard paths are checked at start."""

import pytest

from wan_train.config import ConfigError, GenerateConfig, TrainConfig, compose_config
from wan_train.config.compose import groups
from wan_train.config.keys import check_keys, check_overrides, key_paths, unknown_key
from wan_train.data.shards import missing_shards

GROUPS = groups()


@pytest.mark.parametrize("key, reason", [
    ("optim.lrr", "optim.lrr: no such key in optim (did you mean optim.lr?)"),
    ("optim.batch_size", "optim.batch_size: no such key in optim (did you mean data.batch_size?)"),
    ("trainer.max_step", "trainer.max_step: no such key in trainer (did you mean trainer.max_steps?)"),
    ("flow.sampler.means", "flow.sampler.means: no such key in flow.sampler (did you mean flow.sampler.mean?)"),
    ("nothing.here", "nothing.here: no such key"),
])
def test_unknown_keys_name_the_closest_valid_ones(key, reason):
    assert unknown_key(key, TrainConfig) == reason


def test_declared_keys_and_keys_below_free_fields_pass():
    for key in key_paths(TrainConfig):
        assert unknown_key(key, TrainConfig) is None, key
    assert unknown_key("data.val_sets.faces", TrainConfig) is None  # a dict's own entries
    assert unknown_key("validation.metrics", TrainConfig) is None


def test_command_lines_are_checked_before_hydra_and_group_choices_pass():
    check_overrides(["recipe=quickstart", "optim=adamw", "hydra/launcher=slurm", "hydra.run.dir=x", "--cfg", "job",
                     "+data.val_sets.extra=[x]", "optim.lr=1e-4,3e-4", "~validation.prompts", "-m"], TrainConfig,
                    groups=GROUPS)
    for bad in ("optim.lrr=1", "+optim.lrr=1", "++trainer.max_step=3", "nonsense=1"):
        with pytest.raises(ConfigError, match=f"^{bad.replace('+', '[+]')}: no such key"):
            check_overrides([bad], TrainConfig, groups=GROUPS)
    with pytest.raises(ConfigError, match="^recipe=quickstart: no such key"):  # not a generate.py key
        check_overrides(["recipe=quickstart"], GenerateConfig, groups={"hydra"})


def test_a_key_added_with_plus_is_refused_on_the_composed_config():
    check_keys(compose_config(["recipe=quickstart"]), TrainConfig)
    cfg = compose_config(["recipe=quickstart", "+optim.lrr=1e-4"])  # Hydra adds any key with +
    with pytest.raises(ConfigError, match=r"^optim\.lrr: no such key in optim \(did you mean optim\.lr\?\)$"):
        check_keys(cfg, TrainConfig)


def test_missing_shards_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.tar").write_bytes(b"")
    assert missing_shards(tmp_path / "full") is None
    assert missing_shards(f"{tmp_path}/full/a.tar") is None
    assert missing_shards(f"{tmp_path}/full/*.tar") is None
    assert missing_shards(f"{tmp_path}/full/{{a,b}}.tar") == f"{tmp_path}/full/b.tar: no such file or folder"
    assert missing_shards(tmp_path / "empty") == f"{tmp_path}/empty: a folder with no .tar shards in it"
    assert missing_shards(f"{tmp_path}/full/*.tgz") == f"{tmp_path}/full/*.tgz: matches no file"
    for url in ("pipe:cat x.tar", "https://host/a.tar", "s3://bucket/a.tar"):
        assert missing_shards(url) is None  # only reading them can tell
