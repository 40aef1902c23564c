"""The C2PA layer of marking what we generate as AI-made (EU AI Act Art. 50(2)): a signed manifest embedded in
the mp4 that says "created by a trained algorithm", and a reader that validates such manifests (ours or anyone's).

    signer = installation_signer()              # or Signer(sign_cert=..., private_key=...) the user configured
    signed = sign_mp4(mp4_bytes, signer=signer, generation={"seed": 0, ...}, title="fox.mp4", watermarked=True)
    read_manifest(Path("fox.mp4")).state        # "Trusted" | "Valid" | "Invalid" | "absent"

The manifest holds one actions assertion (c2pa.created, digitalSourceType trainedAlgorithmicMedia, softwareAgent
wan_train, then c2pa.watermarked.unbound when an invisible watermark was applied), the custom assertion
`org.wan_train.generation` (the caller's JSON) and claim_generator_info naming wan_train. Inputs the output was
made from (an i2v first frame) are added as `inputTo` ingredients, so a manifest already on them stays in the
chain (Code of Practice Measure 1.2: do not remove existing markings).

Facts relied on (c2pa-python 0.38.1, native c2pa-rs 0.91; tested offline, see tests/unit/test_marking_manifest.py):
- MP4 is hard-bound by a BMFF hash (c2pa.hash.bmff.v3): one changed byte in mdat or moov reads back "Invalid"
  with assertion.bmffHash.mismatch; a re-encode drops the manifest ("absent"): C2PA alone does not survive
  transcoding, hence the watermark layer beside it.
- Without trust anchors a good signature reads "Valid" (failure code signingCredential.untrusted); with the
  signer's CA among `trust.user_anchors` it reads "Trusted". c2pa-rs has no built-in anchors.
- c2pa refuses (at signing) a leaf certificate without SKI/AKI ("the certificate is invalid"); the leaf needs
  digitalSignature key usage and an EKU it accepts (emailProtection works).
- `c2pa.watermarked` (deprecated since C2PA 2.4) and `c2pa.watermarked.bound` require a c2pa.soft-binding
  assertion (else assertion.action.softBindingMissing, fatal at signing); our keyed watermark binds nothing to
  the manifest, which is what C2PA 2.3's `c2pa.watermarked.unbound` says.
- With the CREATE intent a parentOf ingredient is not allowed (docs/intents.md); `inputTo` (C2PA 2.1: input to
  an AI/ML process) is the relationship of a generation input, and its manifest validates as an ingredient.
- Offline: no time-stamp authority (ta_url None), remote manifest fetch and OCSP off, thumbnails off (none for
  video anyway; an ingredient thumbnail would copy the user's input image into every output).
"""

from __future__ import annotations

import dataclasses
import functools
import datetime
import io
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wan_train.fileio.durable import atomic_file, make_dirs
from wan_train.marking.home import config_dir, locked


GENERATION_LABEL = "org.wan_train.generation"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ALGS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
STATES = ("absent", "Invalid", "Valid", "Trusted")
SIGNER_FILES = ("ca.pem", "sign_cert.pem", "private_key.pem")
SIGNER_VALIDITY = datetime.timedelta(days=3650)
# offline verification: never fetch a remote manifest or an OCSP response
_OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
_BUILDER = {**_OFFLINE, "builder": {"thumbnail": {"enabled": False}}}
_ACTIONS = ("c2pa.actions", "c2pa.actions.v2")


@dataclass(frozen=True)
class Signer:
    """What c2pa's C2paSignerInfo needs, named as c2patool names them."""
    sign_cert: Path  # PEM certificate chain, leaf first
    private_key: Path  # PEM private key
    alg: str = "es256"  # one of ALGS
    ta_url: str | None = None  # RFC 3161 time-stamp authority; None offline (no time-stamp)


# ------------------------------------------------------------------------------------------- the signer

def installation_signer(folder: Path | None = None) -> Signer:
    """The signer used when the user configured none: a CA certificate and an ES256 leaf made once per
    installation in `folder` (default config_dir()/c2pa/): ca.pem, sign_cert.pem (leaf then CA) and
    private_key.pem (mode 0600, in a 0700 folder), each written atomically and reused afterwards. An fcntl lock
    on folder/.lock makes a second process wait for the first instead of making a second signer. The CA's key
    is never stored, so nothing else can be issued under it. Readers report it 'Valid' (untrusted) unless
    ca.pem is passed as a trust anchor."""
    folder = Path(folder) if folder is not None else config_dir() / "c2pa"
    make_dirs(folder)
    os.chmod(folder, 0o700)  # the key is briefly 0666 & ~umask between its rename and its chmod below
    with locked(folder / ".lock"):
        if not all((folder / name).is_file() for name in SIGNER_FILES):  # none yet, or a crash between writes
            ca_pem, chain_pem, key_pem = _make_signer(f"wan_train local signer ({socket.gethostname()})")
            with atomic_file(folder / "ca.pem") as file:
                file.write(ca_pem)
            with atomic_file(folder / "private_key.pem") as file:
                file.write(key_pem)
            os.chmod(folder / "private_key.pem", 0o600)
            with atomic_file(folder / "sign_cert.pem") as file:  # last: its presence means the set is whole
                file.write(chain_pem)
    return Signer(sign_cert=folder / "sign_cert.pem", private_key=folder / "private_key.pem")


def _make_signer(common_name: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, leaf + CA chain, leaf private key) as PEM: P-256 keys, the extensions c2pa checks."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wan_train")])

    def certificate(subject: x509.Name, public_key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(name(f"{common_name} CA"))
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + SIGNER_VALIDITY)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    ca = (certificate(name(f"{common_name} CA"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (certificate(name(common_name), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, leaf_pem = (c.public_bytes(serialization.Encoding.PEM) for c in (ca, leaf))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ca_pem, leaf_pem + ca_pem, key_pem


# ------------------------------------------------------------------------------------------------ signing

def sign_mp4(data: bytes, *, signer: Signer, generation: dict, title: str, watermarked: bool = False,
             ingredients: Sequence[Path] = ()) -> bytes:
    """`data` (an mp4's bytes) with a C2PA manifest embedded (module docstring: what it says). Every file in
    `ingredients` (input images or videos the output was made from) becomes an inputTo ingredient, its own
    manifest kept in the chain. Offline unless signer.ta_url is set. ValueError naming the certificate / key
    file when they cannot be read or c2pa refuses them."""
    agent = {"name": "wan_train", "version": software_version()}
    actions = [{"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA, "softwareAgent": agent}]
    if watermarked:
        actions.append({"action": "c2pa.watermarked.unbound", "softwareAgent": agent})
    manifest = {"title": title, "claim_generator_info": [agent],
                "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}},
                               {"label": GENERATION_LABEL, "data": json.loads(json.dumps(generation))}]}
    output = io.BytesIO()
    with _native_signer(signer) as native, c2pa.Context.from_dict(_BUILDER) as context, \
            c2pa.Builder(manifest, context) as builder:
        for path in map(Path, ingredients):
            with open(path, "rb") as file:
                try:
                    builder.add_ingredient({"title": path.name, "relationship": "inputTo"}, _format(path), file)
                except c2pa.C2paError as error:
                    raise ValueError(f"ingredient {path}: c2pa cannot read it ({_one_line(error)})") from None
        try:
            builder.sign(native, "video/mp4", io.BytesIO(data), output)
        except c2pa.C2paError.Signature as error:  # the credentials parse but c2pa refuses them
            raise ValueError(f"c2pa refuses the signer {signer.sign_cert} / {signer.private_key}: "
                             f"{_one_line(error)}") from None
    return output.getvalue()


def _native_signer(signer: Signer) -> c2pa.Signer:
    """c2pa's Signer for `signer`, its files checked first so a bad one is named in the error."""
    if signer.alg not in ALGS:
        raise ValueError(f"signer alg {signer.alg!r} is not one of {', '.join(ALGS)}")
    chain_pem = _read(signer.sign_cert, "signer's certificate chain")
    key_pem = _read(signer.private_key, "signer's private key")
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as error:
        raise ValueError(f"{signer.sign_cert}: not a PEM certificate chain ({_one_line(error)})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:  # TypeError: an encrypted key
        raise ValueError(f"{signer.private_key}: not an unencrypted PEM private key ({_one_line(error)})") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ValueError(f"{signer.private_key} is not the key of the first certificate in {signer.sign_cert}")
    try:
        return c2pa.Signer.from_info(c2pa.C2paSignerInfo(signer.alg, chain_pem, key_pem, signer.ta_url))
    except c2pa.C2paError as error:  # e.g. an alg that does not fit the key
        raise ValueError(f"c2pa refuses the signer {signer.sign_cert} / {signer.private_key} "
                         f"({signer.alg}): {_one_line(error)}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the {what} {path}: {error.strerror}") from None


def software_version() -> str:
    try:
        return metadata.version("wan_train")
    except metadata.PackageNotFoundError:  # a source checkout that was never pip-installed
        return sys.modules["wan_train"].__version__  # imported: this module lives in it


def _format(path: Path) -> str:
    return path.suffix.lstrip(".").lower()  # c2pa takes an extension (mp4, png, jpg, ...) as the format


@functools.cache
def _readable() -> frozenset[str]:
    return frozenset(c2pa.Reader.get_supported_mime_types())


def readable_by_c2pa(path: Path) -> bool:
    return _format(Path(path)) in _readable()


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


# ------------------------------------------------------------------------------------------------ reading

@dataclass(frozen=True)
class ManifestReport:
    """What a file's C2PA manifest says and whether it holds up."""
    state: str  # one of STATES
    signer: str | None  # the signing certificate's common name (else its organisation) as c2pa reports it
    digital_source_type: str | None  # of the c2pa.created / c2pa.opened action
    generation: dict | None  # the org.wan_train.generation assertion, if present
    software_agent: str | None  # "name version" of the creating tool (wan_train, or another for foreign files)
    time: str | None  # signing time if time-stamped
    errors: list[str]  # validation codes that failed (signingCredential.untrusted too), or c2pa's error message
    ingredients: list[str] = dataclasses.field(default_factory=list)  # titles of the active manifest's ingredients

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_manifest(path: Path, *, trust_anchors: Sequence[Path] = ()) -> ManifestReport:
    """Read and validate the C2PA manifest of a file (mp4, png, jpeg and whatever else c2pa reads), offline.
    'absent' when it has none (or only a remote one, which is not fetched); 'Invalid' when it does not validate
    or cannot be decoded; 'Trusted' when its signer chains to one of `trust_anchors` (PEM CA files), else
    'Valid'. ValueError for a file type c2pa does not read."""
    path = Path(path)
    settings = _OFFLINE
    if trust_anchors:
        settings = {**_OFFLINE, "trust": {"user_anchors": "".join(map(_anchor, trust_anchors))}}
    with c2pa.Context.from_dict(settings) as context, open(path, "rb") as file:
        try:
            reader = c2pa.Reader.try_create(_format(path) or None, file, context=context)
        except c2pa.C2paError.NotSupported:
            raise ValueError(f"{path}: c2pa does not read this file type") from None
        except c2pa.C2paError.RemoteManifest as error:
            return ManifestReport("absent", None, None, None, None, None, [_one_line(error)])
        except c2pa.C2paError as error:  # a manifest that does not decode, or a container that does not parse
            return ManifestReport("Invalid", None, None, None, None, None, [_one_line(error)])
        if reader is None:  # ManifestNotFound
            return ManifestReport("absent", None, None, None, None, None, [])
        with reader:
            return _report(json.loads(reader.json()))


def _anchor(path: Path) -> str:
    """A trust anchor file's PEM text, checked here: c2pa names no file when it cannot parse one."""
    pem = _read(path, "trust anchor")
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        raise ValueError(f"trust anchor {path}: not a PEM certificate ({_one_line(error)})") from None
    return pem.decode("utf-8") + "\n"


def _report(store: dict) -> ManifestReport:
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    assertions = manifest.get("assertions", [])
    actions = [a for assertion in assertions if assertion["label"].split("__")[0] in _ACTIONS  # __1: a 2nd one
               for a in assertion.get("data", {}).get("actions", [])]
    first = next((a for a in actions if a.get("action") in ("c2pa.created", "c2pa.opened")), {})
    generation = next((a.get("data") for a in assertions if a["label"] == GENERATION_LABEL), None)
    signature = manifest.get("signature_info", {})
    generator = manifest.get("claim_generator_info")
    results = store.get("validation_results", {}).get("activeManifest")
    failures = results["failure"] if results is not None else store.get("validation_status", [])
    return ManifestReport(
        state=store.get("validation_state", "Invalid"),
        signer=signature.get("common_name") or signature.get("issuer"),
        digital_source_type=first.get("digitalSourceType"),
        generation=generation,
        software_agent=(_agent(first.get("softwareAgent")) or _agent(generator[0] if generator else None)
                        or manifest.get("claim_generator")),  # v1 claims: a claim_generator string
        time=signature.get("time"),
        errors=[f["code"] for f in failures],
        ingredients=[i.get("title", "") for i in manifest.get("ingredients", [])],
    )


def _agent(agent: dict | str | None) -> str | None:
    """A softwareAgent / claim_generator_info entry ({name, version} in v2 claims, a string in v1) as text."""
    if isinstance(agent, dict):
        return " ".join(str(agent[k]) for k in ("name", "version") if agent.get(k)) or None
    return agent
