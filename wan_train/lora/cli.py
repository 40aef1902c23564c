"""python -m wan_train.lora list | show | verify | export | import | merge | promote: the adapter registry from the
command line (--root, default ./adapters).

    list [CLIENT]                               every version: kind, experts, base, steps, promoted, scores
    show REF [--config]                         a version's manifest (the resolved training config with --config)
    verify REF                                  file sizes and sha256s against the manifest
    export REF --format comfyui|diffusers|kohya|peft --out DIR [--dtype bf16] [--blocks-only]
                                                one file per expert (a Wan2.2 pair: two) + export.json naming the
                                                loader slot of each and the known loaders that cannot read it
                                                (diffusers reads comfyui / kohya files only for block Linears:
                                                a warning names the modules; --blocks-only drops the rest)
    import FILE [FILE] --client C --name N --size SIZE [--experts high_noise low_noise] [--base CKPT]
                                                another tool's LoRA (any layout load_lora reads) as a new version
    merge REF[:W] [REF[:W] ...] --base CKPT --out DIR
                                                the weighted adapters folded into the base DiT(s), written in the
                                                official layout (high_noise_model/ and low_noise_model/ for A14B)
    promote REF [--require METRIC=MIN ...] [--force]
                                                make REF what 'client/adapter' resolves to, if its scores pass
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from wan_train.fileio.durable import write_text
from wan_train.lora.adapters import LoraModule, LoraWeights, load_lora
from wan_train.lora.consumers import outside_blocks, unreadable_by
from wan_train.lora.formats import FORMATS, SUFFIX, read_lora, write_lora
from wan_train.lora.identity import base_identity, check_base
from wan_train.lora.merge import merge
from wan_train.lora.registry import AdapterVersion, Registry, RegistryError
from wan_train.lora.resolve import BASE_KEY, DENSE, EXPERT_KEY, PEFT_WEIGHTS, resolve_adapter
from wan_train.models import EXPERTS, CheckpointError, WanDiT, get_size, load_dit, save_dit

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# where each file of an export goes, per format (the A14B pair: one LoRA per expert model)
SLOTS = {
    "comfyui": {DENSE: "LoraLoaderModelOnly on the Wan model",
                "high_noise": "LoraLoaderModelOnly on the high-noise model (wan2.2 ..._high_noise_...)",
                "low_noise": "LoraLoaderModelOnly on the low-noise model (wan2.2 ..._low_noise_...)"},
    "diffusers": {DENSE: "pipe.load_lora_weights(file)",
                  "high_noise": "pipe.load_lora_weights(file)  (transformer)",
                  "low_noise": "pipe.load_lora_weights(file, load_into_transformer_2=True)  (transformer_2)"},
    "kohya": {DENSE: "--lora_weight (musubi-tuner)", "high_noise": "--lora_weight_high_noise (musubi-tuner)",
              "low_noise": "--lora_weight (musubi-tuner, low-noise DiT)"},
    "peft": {DENSE: "PeftModel.from_pretrained(transformer, folder)",
             "high_noise": "PeftModel.from_pretrained(high-noise transformer, folder)",
             "low_noise": "PeftModel.from_pretrained(low-noise transformer, folder)"},
}
console = Console(width=None if sys.stdout.isatty() else 200)  # pipes: whole rows, not 80 columns


def skeleton(size: str) -> WanDiT:
    """The named size's DiT on the meta device: module names and shapes, no memory (to map LoRA keys)."""
    with torch.device("meta"):
        return WanDiT(get_size(size).dit)


def version_lora(version: AdapterVersion, key: str) -> LoraWeights:
    model = skeleton(version.manifest["base"]["name"])
    return load_lora(version.file(version.manifest["weights"][key]), model=model)


# ---------------------------------------------------------------------------------------------------- commands
def cmd_list(args) -> int:
    registry = Registry(args.root)
    versions = registry.list(args.client)
    if not versions:
        console.print(f"no adapters under {args.root}")
        return 0
    table = Table()
    table.add_column("ref", no_wrap=True)
    for column in ("kind", "experts", "base", "steps", "promoted", "scores", "created"):
        table.add_column(column, overflow="fold")
    promoted = {}
    for v in versions:
        key = (v.client, v.adapter)
        if key not in promoted:
            found = registry.promoted(*key)
            promoted[key] = found.version if found else None
        m = v.manifest
        scores = ", ".join(f"{k}={val:.4g}" for k, val in m["scores"].items())
        table.add_row(v.ref, m.get("kind", "?"), ",".join(m.get("experts", [])), str(m.get("base", {}).get("name")),
                      ",".join(str(s) for s in m.get("steps", {}).values()),
                      "yes" if promoted[key] == v.version else "", scores, m["created"][:10])
    console.print(table)
    return 0


def cmd_show(args) -> int:
    version = Registry(args.root).get(args.ref)
    manifest = dict(version.manifest)
    if not args.config:
        manifest.pop("config", None)
    console.print(f"[bold]{version.ref}[/]  {version.path}")
    console.print_json(json.dumps(manifest, default=str))
    return 0


def cmd_verify(args) -> int:
    registry = Registry(args.root)
    version = registry.get(args.ref)
    registry.verify(version)
    console.print(f"{version.ref}: {len(version.manifest['files'])} files verified")
    return 0


def cmd_export(args) -> int:
    registry = Registry(args.root)
    version = registry.get(args.ref)
    registry.verify(version)
    # every expert's modules first: a refusal leaves no file of a pair behind
    selected = {key: export_modules(version_lora(version, key), what=f"{version.ref} ({key})",
                                    blocks_only=args.blocks_only) for key in version.manifest["weights"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    identities = version.manifest["base"].get("identity", {})
    stem = f"{version.client}_{version.adapter}_{version.version}"
    files = []
    for key, (modules, dropped) in selected.items():
        path = out / f"{stem}{'' if key == DENSE else '_' + key}{SUFFIX[args.format]}"
        metadata = {EXPERT_KEY: key, "wan_train.ref": version.ref}
        if identities.get(key):
            metadata[BASE_KEY] = identities[key]
        write_lora(path, modules, format=args.format, metadata=metadata, dtype=DTYPES[args.dtype])
        unreadable = unreadable_by(modules, format=args.format)
        for loader, why in unreadable.items():
            hint = "; --blocks-only drops the modules outside the blocks" if outside_blocks(modules) else ""
            console.print(f"[yellow]warning: {path.name}: {loader} cannot load it: {why} (for diffusers, "
                          f"--format diffusers loads every module{hint})[/]")
        files.append({"file": path.name, "expert": key, "slot": SLOTS[args.format][key],
                      "base_identity": identities.get(key), "dropped_modules": dropped,
                      "unreadable_by": unreadable})
    _write_json(out / "export.json", {"ref": version.ref, "format": args.format, "dtype": args.dtype,
                                      "trigger_words": version.manifest.get("trigger_words", []), "files": files})
    for f in files:
        console.print(f"{out / f['file']}  ->  {f['slot']}")
    return 0


def export_modules(lora: LoraWeights, *, what: str, blocks_only: bool) -> tuple[dict[str, LoraModule], list[str]]:
    """The modules to export, and those --blocks-only drops (the Linears outside the transformer blocks: head,
    text / time embeddings, time projection, image projection), named in a warning."""
    dropped = outside_blocks(lora.modules) if blocks_only else []
    modules = {name: m for name, m in lora.modules.items() if name not in dropped}
    if not modules:
        raise ValueError(f"export --blocks-only: {what} adapts no Linear inside the transformer blocks "
                         f"(only {', '.join(dropped)}); nothing would be left to export")
    if dropped:
        console.print(f"[yellow]--blocks-only: {what}: dropping {len(dropped)} module(s) outside the transformer "
                      f"blocks, so the export is not the whole adapter: {', '.join(dropped)}[/]")
    return modules, dropped


def cmd_import(args) -> int:
    experts = args.experts or [DENSE]
    if len(experts) != len(args.files):
        raise SystemExit(f"import: {len(args.files)} file(s) but --experts names {len(experts)}")
    bad = [e for e in experts if e not in (*EXPERTS, DENSE)]
    if bad or (len(experts) > 1 and DENSE in experts):
        raise SystemExit(f"import: --experts {experts}: use high_noise and/or low_noise (none for a dense model)")
    identities, weights, ranks = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="wan_train_import_") as tmp:
        for key, file in zip(experts, args.files, strict=True):
            if args.base:
                model = load_dit(args.base, expert=None if key == DENSE else key, dtype=torch.float32)
                identities[key] = base_identity(model)
            else:
                model, identities[key] = skeleton(args.size), None
            lora = read_lora(file, model=model, alpha=args.alpha)
            folder = Path(tmp) if key == DENSE else Path(tmp) / key
            metadata = {EXPERT_KEY: key, **({BASE_KEY: identities[key]} if identities[key] else {})}
            write_lora(folder, lora.modules, format="peft", metadata=metadata)
            weights[key] = PEFT_WEIGHTS if key == DENSE else f"{key}/{PEFT_WEIGHTS}"
            ranks = sorted({m.rank for m in lora.modules.values()} | set(ranks))
        manifest = {"kind": args.kind, "trigger_words": args.trigger_words,
                    "base": {"name": args.size, "checkpoint": args.base, "identity": identities},
                    "experts": experts, "weights": weights, "lora": {"rank": ranks[0] if len(ranks) == 1 else ranks},
                    "imported_from": [str(Path(f).resolve()) for f in args.files], "steps": {}, "scores": {}}
        version = Registry(args.root).publish(args.client, args.name, Path(tmp), manifest)
    if not args.base:
        console.print("[yellow]no --base given: the base identity is unknown, so loading this adapter onto another "
                      "model cannot be refused[/]")
    console.print(f"imported as {version.ref}")
    return 0


def cmd_merge(args) -> int:
    blends: dict[str | None, list] = {}
    for item in args.refs:
        spec, _, weight = item.rpartition(":")
        try:
            strength = float(weight)
        except ValueError:
            spec, strength = item, 1.0
        for found in resolve_adapter(spec or item, root=args.root):
            blends.setdefault(found.expert, []).append((found, strength))
    experts = [e for e in blends if e is not None]
    targets = EXPERTS if experts else [None]
    out = Path(args.out)
    for expert in targets:
        dit = load_dit(args.base, expert=expert, dtype=torch.float32)
        blend = []
        for found, strength in blends.get(None, []) + (blends.get(expert, []) if expert else []):
            check_base(found.base, dit, what=found.ref, allow_mismatch=args.allow_base_mismatch)
            blend.append((load_lora(found.path, model=dit), strength))
        merge(dit, blend, keep_originals=False)
        path = out if expert is None else out / f"{expert}_model"
        save_dit(dit.to_dtype(DTYPES[args.dtype]), path, layout="official")
        console.print(f"{path}: {len(blend)} adapter(s) merged into {args.base}{f' ({expert})' if expert else ''}")
    return 0


def cmd_promote(args) -> int:
    require = {}
    for item in args.require:
        metric, sep, minimum = item.partition("=")
        try:
            require[metric] = float(minimum)
        except ValueError:
            raise SystemExit(f"promote: --require {item!r}: expected METRIC=MIN, e.g. clip_score=0.3") from None
        if not sep:
            raise SystemExit(f"promote: --require {item!r}: expected METRIC=MIN")
    version = Registry(args.root).promote(args.ref, require=require, force=args.force)
    console.print(f"{version.client}/{version.adapter} -> {version.version}")
    return 0


def _write_json(path: Path, value: dict) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wan_train.lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="adapters", help="the registry folder")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every version")
    p.add_argument("client", nargs="?")
    p.set_defaults(run=cmd_list)
    p = sub.add_parser("show", help="a version's manifest")
    p.add_argument("ref")
    p.add_argument("--config", action="store_true", help="include the resolved training config")
    p.set_defaults(run=cmd_show)
    p = sub.add_parser("verify", help="check a version's files against its manifest")
    p.add_argument("ref")
    p.set_defaults(run=cmd_verify)
    p = sub.add_parser("export", help="write a version for another tool")
    p.add_argument("ref")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, help="folder for the file(s) and export.json")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="factor dtype (alpha stays exact)")
    p.add_argument("--blocks-only", action="store_true",
                   help="export only the Linears inside the transformer blocks (musubi-tuner's Wan LoRA scope), "
                        "dropping head / embedding / projection modules with a warning: diffusers' loader cannot "
                        "read those from comfyui or kohya files")
    p.set_defaults(run=cmd_export)
    p = sub.add_parser("import", help="register another tool's LoRA file(s)")
    p.add_argument("files", nargs="+")
    p.add_argument("--client", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--size", required=True, help="the base's model size (wan_train.models.SIZES)")
    p.add_argument("--experts", nargs="+", help="the expert of each file (A14B): high_noise low_noise")
    p.add_argument("--base", help="the base checkpoint, to record its identity (recommended)")
    p.add_argument("--alpha", type=float, help="lora_alpha when the file does not carry it")
    p.add_argument("--kind", choices=("style", "character"), default="style")
    p.add_argument("--trigger-words", nargs="*", default=[])
    p.set_defaults(run=cmd_import)
    p = sub.add_parser("merge", help="fold adapters into the base weights and save the DiT(s)")
    p.add_argument("refs", nargs="+", help="REF or REF:STRENGTH (a blend when several)")
    p.add_argument("--base", required=True, help="the base checkpoint (a Wan folder or DiT file)")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--allow-base-mismatch", action="store_true")
    p.set_defaults(run=cmd_merge)
    p = sub.add_parser("promote", help="point client/adapter at a version")
    p.add_argument("ref")
    p.add_argument("--require", nargs="*", default=[], help="METRIC=MIN gates on the version's scores")
    p.add_argument("--force", action="store_true", help="promote even if a gate fails")
    p.set_defaults(run=cmd_promote)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (RegistryError, CheckpointError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
