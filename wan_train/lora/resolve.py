"""What a user names as an adapter (`lora=...` of generate.py, the CLI's REF) -> the files to apply, each with the
expert it belongs to and the base identity it was trained on.

    acme/mascot, acme/mascot/v0002, acme/mascot@latest   a registry version (a Wan2.2 pair gives two files)
    runs/x/adapter                                       a peft folder (adapter_model.safetensors inside)
    mascot.safetensors                                   a file in any layout load_lora reads

Files we write carry `wan_train.base_hash` and `wan_train.expert` in their safetensors metadata, so an exported
file keeps its base identity; files from other trainers have none and cannot be checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from wan_train.lora.formats import PEFT_WEIGHTS
from wan_train.lora.registry import Registry, RegistryError
from wan_train.models import EXPERTS, CheckpointError

BASE_KEY, EXPERT_KEY = "wan_train.base_hash", "wan_train.expert"  # safetensors metadata of every adapter we write
DENSE = "dit"  # the expert key of a dense model's (single) adapter


@dataclass(frozen=True)
class AdapterFile:
    path: Path
    expert: str | None  # the A14B expert it adapts; None: every DiT of the model
    base: str | None  # the base identity it was trained on; None: unknown (another trainer's file)
    ref: str  # what the user named (a registry ref or the path)


def stamp(path: str | Path) -> dict[str, str]:
    """The base identity and expert an adapter file was written with ({} for files from other trainers)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # safetensors' own error types for a corrupt or non-safetensors file
        raise CheckpointError(f"{path}: cannot read as safetensors: {error}") from error
    return {k: metadata[k] for k in (BASE_KEY, EXPERT_KEY) if k in metadata}


def resolve_adapter(spec: str, *, root: str | Path = "adapters") -> list[AdapterFile]:
    """A path (file or peft folder) if one exists, else a registry ref under `root` (verified against its
    recorded hashes first, so a corrupt or edited version is refused before use)."""
    path = Path(spec)
    if path.is_dir() and (path / PEFT_WEIGHTS).is_file():
        path = path / PEFT_WEIGHTS
    if path.is_file():
        info = stamp(path)
        expert = info.get(EXPERT_KEY)
        return [AdapterFile(path, expert if expert in EXPERTS else None, info.get(BASE_KEY), spec)]
    if path.exists() or spec.endswith(".safetensors"):
        raise FileNotFoundError(f"lora={spec}: no such adapter file (or a folder without {PEFT_WEIGHTS})")
    registry = Registry(root)
    try:
        version = registry.get(spec)
    except RegistryError as error:
        raise FileNotFoundError(f"lora={spec}: not a file, and not in the registry at {root}: {error}") from None
    registry.verify(version)
    identities = version.manifest["base"]["identity"]
    return [AdapterFile(version.file(rel), None if key == DENSE else key, identities.get(key), version.ref)
            for key, rel in version.manifest["weights"].items()]
