"""The import direction of DESIGN.md, checked on the source: models and flow stay torch-level, nothing in
wan_train imports diffusers (a test-only reference), eval/ or data_tools/."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "wan_train"
# subpackage -> wan_train subpackages it may import (itself always allowed)
ALLOWED_INTERNAL = {
    "fileio": set(),  # durable writes: standard library only, below everything
    "models": {"fileio"},
    "flow": set(),
    "lora": {"models", "fileio"},
    "inference": {"flow", "models", "lora", "fileio", "progress", "marking"},
    "marking": {"fileio"},  # provenance of generated media: called by inference's output writer
    "data": {"fileio"},
    "parallel": {"models", "fileio"},  # the FSDP wrap unit is the DiT block
    "memory": {"models"},  # fills the DiT's offload hook points
    "plan": {"models", "memory", "lora", "data", "config"},  # composes a run's config; counts a meta-device DiT
    "training": {"flow", "inference", "models", "lora", "data", "parallel", "config", "memory", "plan", "fileio",
                 "progress", "marking"},
    "config": {"models", "flow", "inference", "lora", "data", "parallel", "memory"},
}
TORCH_LEVEL = {"torch", "safetensors", "numpy", "transformers", "tokenizers", "ftfy", "gguf"}
NEVER = {"diffusers", "eval", "data_tools"}


def imports_of(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def is_stdlib(name: str) -> bool:
    import sys
    return name in sys.stdlib_module_names or name == "__future__"


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_design(path):
    parts = path.relative_to(PACKAGE).parts
    sub = parts[0] if len(parts) > 1 else None
    for name in imports_of(path):
        top = name.split(".")[0]
        assert top not in NEVER, f"{path} imports {name}"
        if sub is None:  # a top-level module (progress.py): a leaf, below everything
            assert top != "wan_train" and (is_stdlib(top) or top == "rich"), f"{path} imports {name}"
            continue
        if top == "wan_train":
            target = name.split(".")[1] if "." in name else None
            assert target in ALLOWED_INTERNAL[sub] | {sub}, f"{path} ({sub}) imports {name}"
        elif sub == "fileio":
            assert is_stdlib(top), f"{path} ({sub}) imports {name}"
        elif sub in ("models", "flow"):
            assert top in TORCH_LEVEL or is_stdlib(top), f"{path} ({sub}) imports {name}"


def test_every_subpackage_has_a_rule():
    subs = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs <= set(ALLOWED_INTERNAL), subs - set(ALLOWED_INTERNAL)
