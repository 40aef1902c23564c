"""Adapter registry: publishing makes immutable, hashed versions (also with several writers at once and after a
crash); refs resolve to the promoted or newest version; verify catches tampering; promotion obeys its score gate;
bad names, refs and sources fail with messages that say what is wrong and what exists."""

import hashlib
import json
import multiprocessing
import os
import time
from datetime import datetime, timezone

import pytest

from wan_train.lora import registry as registry_module
from wan_train.lora.registry import AdapterVersion, Registry, RegistryError

FILES = {  # a Wan2.2 MoE adapter: one file set per expert plus a top-level config
    "adapter_config.json": b'{"r": 4, "lora_alpha": 8}',
    "high_noise/adapter_model.safetensors": b"\x00\x01high" * 100,
    "low_noise/adapter_model.safetensors": b"\x02\x03low" * 100,
}


def stage(folder, files=FILES):
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def snapshot(folder):
    """Every file under ``folder`` with its bytes: compares whole trees, byte for byte."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def reg(tmp_path):
    return Registry(tmp_path / "adapters")


def publish(reg, tmp_path, ref="acme/mascot", files=FILES, manifest=None, **kw):
    source = stage(tmp_path / f"src-{len(list(tmp_path.iterdir()))}", files)
    return reg.publish(*ref.split("/"), source, manifest or {}, **kw)


def test_publish_twice_records_hashes_and_refs_resolve(reg, tmp_path):
    source = stage(tmp_path / "src")
    before = snapshot(source)
    lineage = {"base_model": "Wan2.2-T2V-A14B", "dataset": "acme-mascot-clips", "note": "café ✓"}
    v1 = reg.publish("acme", "mascot", source, lineage)
    v2 = publish(reg, tmp_path, files={**FILES, "adapter_config.json": b'{"r": 8}'})

    assert (v1.ref, v2.ref) == ("acme/mascot/v0001", "acme/mascot/v0002")
    assert snapshot(source) == before  # the caller's folder is neither moved nor given a manifest
    assert snapshot(v1.path) == {**FILES, "manifest.json": (v1.path / "manifest.json").read_bytes()}
    m = v1.manifest
    assert m["files"] == {rel: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for rel, d in FILES.items()}
    assert (m["client"], m["adapter"], m["version"], m["scores"]) == ("acme", "mascot", "v0001", {})
    assert {k: m[k] for k in lineage} == lineage
    assert datetime.fromisoformat(m["created"]).utcoffset() == timezone.utc.utcoffset(None)
    text = (v1.path / "manifest.json").read_text(encoding="utf-8")
    assert text == json.dumps(m, indent=2, ensure_ascii=False) + "\n"  # readable, non-ASCII kept as is

    assert v1.file("high_noise/adapter_model.safetensors").read_bytes() == FILES["high_noise/adapter_model.safetensors"]
    with pytest.raises(RegistryError, match="no file 'nope.safetensors'.*adapter_config.json"):
        v1.file("nope.safetensors")

    assert [v.version for v in reg.versions("acme", "mascot")] == ["v0001", "v0002"]
    assert reg.get("acme/mascot") == v2  # nothing promoted: the newest
    assert reg.promoted("acme", "mascot") is None
    assert reg.promote("acme/mascot/v0001") == v1
    assert reg.get("acme/mascot") == v1 == reg.promoted("acme", "mascot")
    assert reg.get("acme/mascot@latest") == v2
    assert reg.get("acme/mascot/v0002").manifest == v2.manifest


def test_explicit_version_is_published_once_and_never_overwritten(reg, tmp_path):
    v5 = publish(reg, tmp_path, version="v0005")
    assert v5.version == "v0005"
    assert publish(reg, tmp_path).version == "v0006"  # automatic numbers continue after the highest
    before = snapshot(v5.path)
    with pytest.raises(RegistryError, match=r"acme/mascot/v0005 exists; versions are immutable \(publish without"):
        publish(reg, tmp_path, files={"adapter_config.json": b"other"}, version="v0005")
    assert snapshot(v5.path) == before
    assert not list(v5.path.parent.glob(".staging-*"))
    reg.verify(reg.get("acme/mascot/v0005"))


def _publish_as_writer(root, source, writer, barrier):
    barrier.wait()  # every writer reads the same "highest version" and races for the same number
    Registry(root).publish("acme", "mascot", source, {"writer": writer})


def test_concurrent_writers_get_distinct_complete_versions(reg, tmp_path):
    n = 6
    sources = [stage(tmp_path / f"src{i}", {**FILES, "adapter_config.json": f"writer {i}".encode()}) for i in range(n)]
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_publish_as_writer, args=(reg.root, sources[i], i, barrier)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * n

    versions = reg.versions("acme", "mascot")
    assert [v.version for v in versions] == [f"v{i:04d}" for i in range(1, n + 1)]
    assert sorted(v.manifest["writer"] for v in versions) == list(range(n))
    for v in versions:
        reg.verify(v)  # complete: every file there with its recorded hash
        assert v.file("adapter_config.json").read_bytes() == f"writer {v.manifest['writer']}".encode()
    assert not list((reg.root / "acme" / "mascot").glob(".staging-*"))


def test_a_stale_version_number_moves_on_instead_of_overwriting(reg, tmp_path, monkeypatch):
    v1 = publish(reg, tmp_path)
    before = snapshot(v1.path)
    stale = iter(["v0001"])  # as if another writer published v0001 between our look and our rename
    real = registry_module._next_version
    monkeypatch.setattr(registry_module, "_next_version", lambda folder: next(stale, None) or real(folder))
    assert publish(reg, tmp_path, files={"adapter_config.json": b"second"}).version == "v0002"
    assert snapshot(v1.path) == before


def test_crash_leftovers_are_ignored_and_stale_staging_is_cleaned(reg, tmp_path):
    folder = reg.root / "acme" / "mascot"
    crashed = folder / ".staging-0123abcd"
    stage(crashed, {"high_noise/adapter_model.safetensors": b"\x00partial"})
    (folder / "v0003").mkdir()  # a version folder with no manifest (made by hand) is not a version
    (folder / "notes.txt").write_text("not a version")
    assert reg.list() == []
    assert reg.versions("acme", "mascot") == []

    v = publish(reg, tmp_path)
    assert v.version == "v0004"  # never lands in (or reuses) the half-made v0003
    assert [x.ref for x in reg.list()] == ["acme/mascot/v0004"]
    assert crashed.exists()  # recent: could still be a live writer

    hours_ago = time.time() - 2 * 3600
    for p in [crashed, *crashed.rglob("*")]:
        os.utime(p, (hours_ago, hours_ago))
    publish(reg, tmp_path)
    assert not crashed.exists()


def test_verify_names_missing_modified_and_extra_files(reg, tmp_path):
    v = publish(reg, tmp_path)
    reg.verify(v)
    high = v.path / "high_noise" / "adapter_model.safetensors"
    data = bytearray(high.read_bytes())
    data[0] ^= 0xFF  # same size, different bytes: only the hash can tell
    high.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=r"adapter_model.safetensors: corrupt or modified \(expected sha256 "):
        reg.verify(v)

    (v.path / "low_noise" / "adapter_model.safetensors").unlink()
    (v.path / "low_noise" / "extra.bin").write_bytes(b"x")
    with pytest.raises(RegistryError) as err:
        reg.verify(v)
    message = str(err.value)
    assert "acme/mascot/v0001 failed verification" in message
    assert "low_noise/adapter_model.safetensors: missing" in message
    assert "low_noise/extra.bin: not in manifest.json" in message
    assert "high_noise/adapter_model.safetensors: corrupt" in message  # every problem, not just the first
    with pytest.raises(RegistryError, match="failed verification"):
        reg.promote(v.ref, force=True)  # force skips the score gate, never the integrity check


def test_truncated_file_and_corrupt_manifest_are_clear_errors(reg, tmp_path):
    v = publish(reg, tmp_path)
    v.file("adapter_config.json").write_bytes(b"{")
    with pytest.raises(RegistryError, match=r"adapter_config.json: corrupt or modified \(expected 25 bytes, found 1\)"):
        reg.verify(v)
    manifest = v.path / "manifest.json"
    manifest.write_text("{not json")
    for call in (lambda: reg.get("acme/mascot"), reg.list, lambda: reg.versions("acme", "mascot")):
        with pytest.raises(RegistryError, match=f"{manifest}.* is corrupt: not valid JSON"):
            call()


def test_promotion_gate_force_history_and_record_scores(reg, tmp_path):
    v1 = publish(reg, tmp_path, manifest={"scores": {"clip_score": 0.3}, "parent": "acme/mascot/v0000"})
    v2 = publish(reg, tmp_path, manifest={"scores": {"clip_score": 0.2}})
    assert reg.promote(v1.ref, require={"clip_score": 0.25}) == v1

    too_low = "cannot promote acme/mascot/v0002: clip_score = 0.2 is below the minimum 0.25"
    with pytest.raises(RegistryError, match=too_low):
        reg.promote(v2.ref, require={"clip_score": 0.25})
    with pytest.raises(RegistryError, match=r"identity is missing \(requires >= 0.5\)"):
        reg.promote(v2.ref, require={"identity": 0.5})
    assert reg.get("acme/mascot") == v1  # refusals leave the pointer alone

    assert reg.promote(v2.ref, require={"identity": 0.5}, force=True) == v2
    assert reg.get("acme/mascot") == v2
    pointer = json.loads((reg.root / "acme" / "mascot" / "promoted.json").read_text())
    assert pointer["version"] == "v0002"
    assert [(h["version"], h["require"], h["forced"]) for h in pointer["history"]] == [
        ("v0001", {"clip_score": 0.25}, False),
        ("v0002", {"identity": 0.5}, True),
    ]

    before = json.loads((v1.path / "manifest.json").read_text())
    files_before = snapshot(v1.path)
    updated = reg.record_scores(v1.ref, {"identity": 0.7})
    assert updated.manifest["scores"] == {"clip_score": 0.3, "identity": 0.7}
    after = json.loads((v1.path / "manifest.json").read_text())
    assert {k: x for k, x in after.items() if k != "scores"} == {k: x for k, x in before.items() if k != "scores"}
    assert list(after) == list(before)  # same field order: a diff of the manifest shows only the scores
    assert {k: d for k, d in snapshot(v1.path).items() if k != "manifest.json"} == {
        k: d for k, d in files_before.items() if k != "manifest.json"
    }
    reg.verify(updated)
    assert reg.promote(v1.ref, require={"clip_score": 0.25, "identity": 0.5}) == v1


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "a..b", "-x", "a b", "ümlaut"])
def test_bad_client_and_adapter_names_are_refused(reg, tmp_path, name):
    source = stage(tmp_path / "src")
    with pytest.raises(RegistryError, match=rf"bad client name {name!r}.*letters, digits"):
        reg.publish(name, "mascot", source, {})
    with pytest.raises(RegistryError, match=rf"bad adapter name {name!r}"):
        reg.publish("acme", name, source, {})
    assert not reg.root.exists() or reg.list() == []


@pytest.mark.parametrize(
    "ref", ["acme", "acme/mascot/v1", "acme/mascot/1", "acme/mascot@newest", "acme/mascot/v0001@latest", "a/b/c/d", 7]
)
def test_bad_refs_say_which_forms_exist(reg, tmp_path, ref):
    publish(reg, tmp_path)
    with pytest.raises(RegistryError, match=r"bad (ref|version).*(client/adapter@latest|v0001)"):
        reg.get(ref)


def test_unknown_client_adapter_and_version_list_what_exists(reg, tmp_path):
    publish(reg, tmp_path)
    publish(reg, tmp_path)
    with pytest.raises(RegistryError, match="nobody: no such client; .* has acme$"):
        reg.get("nobody/mascot")
    with pytest.raises(RegistryError, match="acme/logo: no such adapter; acme has mascot$"):
        reg.get("acme/logo")
    with pytest.raises(RegistryError, match="^acme/mascot/v0009: no such version; acme/mascot has v0001, v0002$"):
        reg.get("acme/mascot/v0009")
    with pytest.raises(RegistryError, match="bad version 'v12'"):
        publish(reg, tmp_path, version="v12")


def test_list_spans_clients_and_filters_by_one(reg, tmp_path):
    for ref in ["beta/style", "acme/mascot", "acme/logo", "acme/mascot"]:
        publish(reg, tmp_path, ref=ref)
    (reg.root / ".trash").mkdir()  # not a client name: ignored
    assert [v.ref for v in reg.list()] == [
        "acme/logo/v0001",
        "acme/mascot/v0001",
        "acme/mascot/v0002",
        "beta/style/v0001",
    ]
    assert [v.ref for v in reg.list("beta")] == ["beta/style/v0001"]
    assert reg.list("nobody") == []
    assert all(isinstance(v, AdapterVersion) for v in reg.list())


def _symlinked(folder):
    stage(folder)
    os.symlink(folder / "adapter_config.json", folder / "link.json")
    return folder


@pytest.mark.parametrize(
    "make_source, manifest, message",
    [
        (lambda f: stage(f, {**FILES, "manifest.json": b"{}"}), {}, "registry writes manifest.json"),
        (_symlinked, {}, "link.json is a symlink"),
        (lambda f: f, {}, "is not a folder"),
        (lambda f: (f.mkdir(), f)[1], {}, "has no files"),
        (stage, {"files": {}}, "manifest sets files: the registry writes these fields"),
        (stage, {"scores": {"fvd": float("nan")}}, r"manifest\['scores'\]\['fvd'\] = nan: expected a finite number"),
        (stage, {"when": datetime.now()}, "not JSON-serialisable"),
    ],
)
def test_bad_sources_and_manifests_publish_nothing(reg, tmp_path, make_source, manifest, message):
    source = make_source(tmp_path / "src")
    with pytest.raises(RegistryError, match=message):
        reg.publish("acme", "mascot", source, manifest)
    assert reg.list() == []
    assert not list(reg.root.glob("*/*/.staging-*"))
