"""The C2PA layer on a tiny real H.264 mp4, offline: a signed output reads back Trusted with a test CA as the
anchor and Valid without, says trainedAlgorithmicMedia and carries the generation record; one changed media byte
reads Invalid, a re-encode drops the mark; the installation signer is made once and works; bad credentials fail
naming the file; a marked input stays in the chain as an ingredient."""

import concurrent.futures
import datetime
import io
import json
import struct

import av
import c2pa
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wan_train.inference.outputs import encode_mp4
from wan_train.marking.manifest import (
    TRAINED_ALGORITHMIC_MEDIA,
    Signer,
    config_dir,
    installation_signer,
    read_manifest,
    sign_mp4,
)

GENERATION = {"model": "wan2.1-t2v-1.3b", "seed": 7, "prompt_sha256": "ab" * 32, "lora": [["fox", 0.8]]}


@pytest.fixture(autouse=True)
def config_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WAN_TRAIN_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def mp4() -> bytes:
    frames = np.random.default_rng(0).integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
    return encode_mp4(frames, fps=16)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory):
    """(ca.pem, Signer): a CA and an ES256 leaf with the extensions c2pa checks, made with `cryptography`."""
    folder = tmp_path_factory.mktemp("test_ca")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(cn, public_key, issuer_key, extensions):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA"),
                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    usage = {"key_encipherment": False, "data_encipherment": False, "key_agreement": False,
             "encipher_only": False, "decipher_only": False}
    ca = cert("test CA", ca_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False, key_cert_sign=True, crl_sign=True,
                       **usage), True)])
    leaf = cert("test signer", key.public_key(), ca_key, [
        (x509.KeyUsage(digital_signature=True, content_commitment=True, key_cert_sign=False, crl_sign=False,
                       **usage), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)])
    (folder / "ca.pem").write_bytes(ca)
    (folder / "chain.pem").write_bytes(leaf + ca)
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "ca.pem", Signer(sign_cert=folder / "chain.pem", private_key=folder / "key.pem")


@pytest.fixture(scope="module")
def signed(mp4, test_ca) -> bytes:
    return sign_mp4(mp4, signer=test_ca[1], generation=GENERATION, title="fox.mp4")


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def frames_of(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def assertion(manifest: dict, label: str):
    return next(a["data"] for a in manifest["assertions"] if a["label"] == label)


def top_level_box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset, size) of the first top-level ISO BMFF box of type `kind`."""
    offset = 0
    while offset < len(data):
        size, box = struct.unpack(">I4s", data[offset:offset + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        if box == kind:
            return offset, size
        offset += size if size else len(data) - offset
    raise AssertionError(f"no {kind} box")


def test_signed_output_reads_trusted_with_the_ca_and_says_ai_generated(tmp_path, mp4, signed, test_ca):
    ca, _ = test_ca
    report = read_manifest(write(tmp_path / "fox.mp4", signed), trust_anchors=[ca])
    assert report.state == "Trusted", report
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert report.generation == GENERATION
    assert report.software_agent.split()[0] == "wan_train"
    assert report.signer == "test signer"
    assert report.time is None  # no time-stamp authority offline
    assert report.errors == [] and report.ingredients == []
    assert json.loads(json.dumps(report.as_dict()))["state"] == "Trusted"
    np.testing.assert_array_equal(frames_of(signed), frames_of(mp4))  # the video itself is untouched


def test_without_trust_anchors_it_reads_valid_but_untrusted(tmp_path, signed):
    report = read_manifest(write(tmp_path / "fox.mp4", signed))
    assert report.state == "Valid"
    assert report.errors == ["signingCredential.untrusted"]
    assert report.generation == GENERATION
    with pytest.raises(ValueError, match="not_a_ca.pem"):
        read_manifest(tmp_path / "fox.mp4", trust_anchors=[write(tmp_path / "not_a_ca.pem", b"not a certificate")])


def test_one_changed_media_byte_reads_invalid(tmp_path, signed, test_ca):
    offset, size = top_level_box(signed, b"mdat")
    tampered = bytearray(signed)
    tampered[offset + size // 2] ^= 0x01
    report = read_manifest(write(tmp_path / "fox.mp4", bytes(tampered)), trust_anchors=[test_ca[0]])
    assert report.state == "Invalid"
    assert any("bmffHash.mismatch" in code for code in report.errors), report.errors


def test_a_reencode_drops_the_manifest(tmp_path, signed):
    reencoded = encode_mp4(frames_of(signed), fps=16)
    report = read_manifest(write(tmp_path / "fox.mp4", reencoded))
    assert report.state == "absent" and report.errors == [] and report.generation is None


def test_installation_signer_is_made_once_and_signs(tmp_path, mp4):
    folder = tmp_path / "c2pa"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # first use from several workers at once (unlocked,
        signers = list(pool.map(lambda _: installation_signer(folder), range(8)))  # key and cert often differ)
    assert len(set(signers)) == 1
    files = {p.name: p.read_bytes() for p in folder.glob("*.pem")}
    assert sorted(files) == ["ca.pem", "private_key.pem", "sign_cert.pem"]
    assert (folder / "private_key.pem").stat().st_mode & 0o777 == 0o600
    chain = x509.load_pem_x509_certificates(files["sign_cert.pem"])
    assert chain[1].public_bytes(serialization.Encoding.PEM) == files["ca.pem"]
    assert "wan_train local signer" in chain[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    signer = installation_signer(folder)
    assert signer == signers[0] and {p.name: p.read_bytes() for p in folder.glob("*.pem")} == files
    out = write(tmp_path / "out.mp4", sign_mp4(mp4, signer=signer, generation={"seed": 1}, title="out.mp4"))
    assert read_manifest(out).state == "Valid"
    assert read_manifest(out, trust_anchors=[folder / "ca.pem"]).state == "Trusted"


def test_installation_signer_defaults_to_the_config_folder(tmp_path):
    assert config_dir() == tmp_path / "config"
    assert installation_signer().sign_cert == tmp_path / "config" / "c2pa" / "sign_cert.pem"


def test_bad_credentials_fail_naming_the_file(tmp_path, mp4, test_ca):
    good = test_ca[1]
    bad_key = write(tmp_path / "bad_key.pem", b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    other_key = write(tmp_path / "other_key.pem", ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cases = {bad_key: Signer(sign_cert=good.sign_cert, private_key=bad_key),
             other_key: Signer(sign_cert=good.sign_cert, private_key=other_key),
             tmp_path / "missing.pem": Signer(sign_cert=tmp_path / "missing.pem", private_key=good.private_key),
             good.private_key: Signer(sign_cert=good.sign_cert, private_key=good.private_key, alg="es384")}
    for named, signer in cases.items():
        with pytest.raises(ValueError, match=str(named)) as raised:
            sign_mp4(mp4, signer=signer, generation={}, title="x.mp4")
        assert "\n" not in str(raised.value)


def test_a_marked_input_stays_in_the_chain(tmp_path, mp4, signed, test_ca):
    marked_input = write(tmp_path / "first_frame.mp4", signed)
    plain_input = write(tmp_path / "plain.mp4", mp4)
    out = write(tmp_path / "out.mp4", sign_mp4(mp4, signer=test_ca[1], generation={"seed": 2}, title="out.mp4",
                                               watermarked=True, ingredients=[marked_input, plain_input]))
    report = read_manifest(out, trust_anchors=[test_ca[0]])
    assert report.state == "Trusted" and report.ingredients == ["first_frame.mp4", "plain.mp4"]

    with c2pa.Reader(str(marked_input)) as reader:
        input_label = json.loads(reader.json())["active_manifest"]
    with c2pa.Reader(str(out)) as reader:
        store = json.loads(reader.json())
    active = store["manifests"][store["active_manifest"]]
    assert active["ingredients"][0]["active_manifest"] == input_label  # the input's manifest, kept and linked
    assert assertion(store["manifests"][input_label], "org.wan_train.generation") == GENERATION
    actions = [a["action"] for a in assertion(active, "c2pa.actions.v2")["actions"]]
    assert actions == ["c2pa.created", "c2pa.watermarked.unbound"]
