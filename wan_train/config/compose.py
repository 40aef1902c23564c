"""Compose a run's config from conf/ and recipes/ (Hydra), from any working directory."""

import re
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from wan_train.config.schema import GenerateConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[2]  # the repository: conf/ and recipes/ sit beside wan_train/
CONF_DIR, RECIPES_DIR = ROOT / "conf", ROOT / "recipes"
GENERATE_CONF_DIR = CONF_DIR / "generate"  # generate.py's own search path: train's groups (lora, ...) stay out


def recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


NOT_TRAIN_GROUPS = {"eval", "generate", "hydra"}  # conf/ folders that are not train.py's choices


def group_options(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """train.py's config groups and their options (group=option), recipes last."""
    out = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in sorted(conf_dir.iterdir())
           if g.is_dir() and g.name not in NOT_TRAIN_GROUPS}
    return {**out, "recipe": recipes()}


def groups() -> set[str]:
    """The config groups train.py's command line may choose from (optim=adamw, recipe=quickstart, hydra/...)."""
    return {*group_options(), "hydra"}


def usage(doc: str, *, train: bool) -> str:
    """--help: the script's own usage and examples, then train.py's groups or generate.py's keys and defaults."""
    if train:
        rest = "\n".join(f"  {group}: {', '.join(options)}" for group, options in group_options().items())
        return f"{doc.strip()}\n\nconfig groups (group=option):\n{rest}\n"
    keys = OmegaConf.to_yaml(OmegaConf.structured(GenerateConfig)).strip()
    return f"{doc.strip()}\n\nkeys (key=value) and defaults:\n" + "\n".join(f"  {line}" for line in keys.splitlines()) + "\n"


def register() -> None:
    """The schema as `train_schema`, and each recipes/NAME.yaml as option NAME of the `recipe` group, applied
    at the global package (a recipe is a list of overrides of the other groups plus values)."""
    from wan_train.parallel.slurm import register_resolver

    register_resolver()  # ${wan_slurm:...} in the SLURM launcher presets
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="generate_schema", node=GenerateConfig)
    for name in recipes():
        node = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text()) or {}
        store.store(name=name, group="recipe", package="_global_", node={**node, "recipe": name})


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """What `python train.py OVERRIDES` runs with (for tests, tools and notebooks)."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def compose_generate_config(overrides: list[str] = ()) -> DictConfig:
    """What `python generate.py OVERRIDES` runs with."""
    register()
    with initialize_config_dir(config_dir=str(GENERATE_CONF_DIR), version_base=None):
        return compose("generate", overrides=list(overrides))


TEXT_KEYS = ("prompt", "negative_prompt")  # free text: colons, dashes, brackets and commas are the prompt's own


def quote_text_overrides(args: list[str], keys: tuple[str, ...] = TEXT_KEYS) -> list[str]:
    """Command-line overrides with each free-text value (prompt="Shot 1: wide — ...") quoted for Hydra, whose
    override grammar would otherwise reject ':', '(', '[', ... or split at ','; '${' stays literal text, not an
    interpolation. Values already quoted stay as they are."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in keys and value and value[0] not in "'\"":
            # Hydra reads backslashes as escapes only before a quote or at the end: double those runs alone
            escaped = re.sub(r"(\\+)(?='|$)", r"\1\1", value).replace("'", "\\'").replace("${", "\\${")
            arg = f"{key}='{escaped}'"
        out.append(arg)
    return out
