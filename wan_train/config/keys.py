"""Strict keys: a key no schema declares is refused, with the closest valid ones, whether it was typed as
`optim.lrr=1e-4` (checked on the command line, before Hydra composes or creates anything) or added with `+`
(Hydra then accepts any key: checked on the composed config). Keys below a free-form field (a dict, Any) are the
user's own."""

import dataclasses
import difflib
import typing
from functools import cache

from omegaconf import DictConfig

from wan_train.config.validate import ConfigError


@cache
def _fields(schema: type) -> dict[str, type | None]:
    """Field name -> its dataclass type (a nested group) or None (a value: anything may sit below it)."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None
            for f in dataclasses.fields(schema)}


def key_paths(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key the schema declares: optim, optim.lr, ..."""
    out = []
    for name, sub in _fields(schema).items():
        out.append(prefix + name)
        if sub is not None:
            out += key_paths(sub, f"{prefix}{name}.")
    return out


def unknown_key(key: str, schema: type) -> str | None:
    """Why `key` (dotted) is not a key of `schema`, with the closest valid keys; None when it is one."""
    node, parts = schema, key.split(".")
    for depth, part in enumerate(parts):
        fields = _fields(node)
        if part not in fields:
            parent = ".".join(parts[:depth])
            return f"{key}: no such key{f' in {parent}' if parent else ''}{_closest(key, parts, depth, fields, schema)}"
        node = fields[part]
        if node is None:  # a value: keys below it (a dict's entries) are the user's
            return None
    return None


def _closest(key: str, parts: list[str], depth: int, siblings: dict, schema: type) -> str:
    prefix = "".join(f"{p}." for p in parts[:depth])
    near = [prefix + name for name in difflib.get_close_matches(parts[depth], siblings, n=3, cutoff=0.6)]
    paths = key_paths(schema)
    if not near:  # a key typed under the wrong group, or misspelt at its first part
        near = difflib.get_close_matches(key, paths, n=3, cutoff=0.75)
    near += [p for p in paths if p.rsplit(".", 1)[-1] == parts[-1] and p not in near]  # optim.batch_size
    return f" (did you mean {', '.join(near[:3])}?)" if near else ""


def check_keys(cfg: DictConfig, schema: type) -> None:
    """Raise ConfigError for the first key of the composed `cfg` that `schema` does not declare (one added with
    `+`: Hydra adds any key that way)."""

    def walk(node: DictConfig, fields: dict, prefix: str) -> None:
        for name in node.keys():
            if name not in fields:
                raise ConfigError(unknown_key(prefix + name, schema))
            if fields[name] is not None and isinstance(node[name], DictConfig):
                walk(node[name], _fields(fields[name]), f"{prefix}{name}.")

    walk(cfg, _fields(schema), "")


def check_overrides(args: list[str], schema: type, *, groups: set[str]) -> None:
    """Raise ConfigError for the first command-line override whose key `schema` does not declare. Hydra's own
    flags and settings (--cfg, -m, hydra.*), config group choices (optim=adamw, hydra/launcher=slurm) and
    deletions are left to Hydra."""
    for arg in args:
        key, sep, _ = arg.partition("=")
        if not sep or arg.startswith("-"):
            continue
        key = key.lstrip("+~")
        if key.split(".")[0] == "hydra" or "/" in key or "@" in key or key in groups:
            continue
        if reason := unknown_key(key, schema):
            raise ConfigError(f"{arg}: {reason.split(': ', 1)[1]}")
