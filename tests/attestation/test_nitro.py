"""AWS Nitro Enclaves documents N1-N4 of the vectors MANIFEST, each with its refused twins."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from medclave.attestation import nitro, registry
from medclave.attestation.binding import report_data_for
from medclave.attestation.core import VerifyOptions
from medclave.attestation.policy import appraisal_of, default_policy, parse_policy
from medclave.attestation.verifier import verify_bundle, verify_raw
from medclave.attestation.x509chain import fingerprint
from medclave.errors import AttestationError
from medclave.protocol.evidence import EvidenceBundle
from tests.attestation._cose_forge import NitroPki
from tests.conftest import flip

N1_AT, N1_LATE = "2023-09-18T15:10:00Z", "2023-09-18T17:38:00Z"
N2_AT, N2_LATE, N2_EARLY = "2022-10-13T09:30:00Z", "2022-10-13T11:59:00Z", "2022-10-13T08:57:00Z"
N3_AT, N3_LATE = "2022-10-12T14:00:00Z", "2022-10-12T16:50:30Z"
N4_AT, N4_LATE = "2023-01-18T14:00:00Z", "2023-01-18T16:08:00Z"
N4 = "non-debug-cert-containing-attestation-document-18-1-23"


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def opts(when: str, **kw: object) -> VerifyOptions:
    return VerifyOptions(now=t(when), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ev(vectors: Path) -> dict[str, bytes]:
    d = vectors / "nitro" / "evervault"
    return {
        "n1": base64.b64decode((d / "valid-attestation-doc-base64").read_bytes()),
        "n1_cert": (d / "valid-certificate.der").read_bytes(),
        "n2": (d / "valid-attestation-doc-bytes").read_bytes(),
        "n3": (d / "debug-mode-attestation-doc-bytes").read_bytes(),
        "n4_pem": (d / f"{N4}.pem").read_bytes(),
        "n4_der": (d / f"{N4}-der.crt").read_bytes(),
        "n4_doc": (d / f"{N4}.embedded-doc.DERIVED.cbor").read_bytes(),
        "root": (vectors / "nitro" / "aws-root" / "root.pem").read_bytes(),
    }


def refused(data: bytes, options: VerifyOptions) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        nitro.verify(data, options)
    return info.value


def test_pinned_root_is_the_vectors_root(ev: dict[str, bytes]) -> None:
    root = x509.load_pem_x509_certificate(ev["root"])
    assert fingerprint(root) == nitro.AWS_NITRO_ROOT_SHA256
    assert fingerprint(root).startswith("641a0321") and fingerprint(root).endswith("79bb5b")


def test_n1_debug_document_binds_a_tls_key(ev: dict[str, bytes]) -> None:
    v = nitro.verify(ev["n1"], opts(N1_AT))
    c = v.claims
    assert v.secure and c["module_id"] == "i-0918f6c55e3b61d89-enc018aa8b8e2285d13"
    assert c["time"].startswith("2023-09-18T15:03:30.860")
    for i in (0, 1, 2, 8):
        assert c["pcrs"][str(i)] == "00" * 48
    assert c["pcrs"]["3"].startswith("4a9329d6") and c["pcrs"]["4"].startswith("d0531b14")
    assert c["debug"] is True
    assert c["nonce"].startswith("bba6bfd5") and len(c["nonce"]) == 512
    spki = x509.load_der_x509_certificate(ev["n1_cert"]).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert len(spki) == 91 and c["user_data"] == spki.hex()
    appraisal = appraisal_of(v, default_policy(), now=t(N1_AT))
    assert [x["code"] for x in appraisal.violations] == ["policy.debug_forbidden"]


def test_n2_production_document_is_accepted(ev: dict[str, bytes]) -> None:
    v = nitro.verify(ev["n2"], opts(N2_AT))
    c = v.claims
    assert c["module_id"].startswith("i-020b6af9246d90e92")
    assert c["pcrs"]["0"].startswith("f4d48b81") and c["pcrs"]["0"].endswith("50142d8b")
    assert c["pcrs"]["1"].startswith("bcdf05fe") and c["pcrs"]["1"].endswith("8654e63f")
    assert c["pcrs"]["2"].startswith("d8f114da") and c["pcrs"]["8"].endswith("210201cb")
    assert c["nonce"].startswith("cb3dc2eb") and c["user_data"] is None and c["public_key"] is None
    assert c["debug"] is False
    assert appraisal_of(v, default_policy(), now=t(N2_AT)).accepted
    assert [x.name for x in v.checks] == ["0. parse document", "1. certificate chain",
                                          "2. document signature"]


def test_n3_debug_document(ev: dict[str, bytes]) -> None:
    v = nitro.verify(ev["n3"], opts(N3_AT))
    assert v.claims["public_key"] == b"my super secret key".hex()
    assert v.claims["user_data"] == b"hello, world!".hex() and v.claims["nonce"] is None
    assert not appraisal_of(v, default_policy(), now=t(N3_AT)).accepted


@pytest.mark.parametrize("form", ["n4_pem", "n4_der", "n4_doc"])
def test_n4_attested_tls_certificate(ev: dict[str, bytes], form: str) -> None:
    assert registry.detect(ev[form]) == "nitro"
    v = nitro.verify(ev[form], opts(N4_AT))
    c = v.claims
    assert c["module_id"].startswith("i-0ec0e572c8263d8ff")
    assert c["pcrs"]["0"].startswith("d265a83f") and c["pcrs"]["0"].endswith("3cf419af")
    assert c["pcrs"]["2"].startswith("e4f634d2") and c["pcrs"]["8"].endswith("4a1443ca")
    assert len(bytes.fromhex(c["user_data"])) == 120 and not c["debug"]
    if form != "n4_doc":
        assert v.checks[-1].name == "3. TLS key binding" and v.checks[-1].ok
        assert c["tls_certificate"]["spki_sha256"] == hashlib.sha256(
            bytes.fromhex(c["user_data"])).hexdigest()
    # One document, one identity, whichever form carried it.
    assert v.evidence_digest == nitro.verify(ev["n4_doc"], opts(N4_AT)).evidence_digest


def test_n4_reference_values_match_only_the_right_pcrs(ev: dict[str, bytes]) -> None:
    v = nitro.verify(ev["n4_der"], opts(N4_AT))
    pcrs = v.claims["pcrs"]
    good = parse_policy(("platforms = ['nitro']\n[platform.nitro.reference_values]\n" + "".join(
        f'"pcrs.{i}" = ["{pcrs[str(i)]}"]\n' for i in (0, 1, 2, 8))).encode())
    assert appraisal_of(v, good, now=t(N4_AT)).accepted
    only8 = parse_policy(f'platforms = ["nitro"]\n[platform.nitro.reference_values]\n'
                         f'"pcrs.8" = ["{pcrs["8"]}"]\n'.encode())
    assert appraisal_of(v, only8, now=t(N4_AT)).accepted
    zeros = parse_policy(('platforms = ["nitro"]\n[platform.nitro.reference_values]\n'
                          f'"pcrs.0" = ["{"00" * 48}"]\n').encode())
    result = appraisal_of(v, zeros, now=t(N4_AT))
    assert [x["code"] for x in result.violations] == ["attestation.measurement_mismatch"]


@pytest.mark.parametrize(("name", "late"), [("n1", N1_LATE), ("n2", N2_LATE), ("n3", N3_LATE),
                                            ("n4_der", N4_LATE), ("n2", N2_EARLY)])
def test_outside_the_window_is_refused(ev: dict[str, bytes], name: str, late: str) -> None:
    assert refused(ev[name], opts(late)).code == "attestation.certificate_expired"


@pytest.mark.parametrize(("name", "when", "marker"), [
    ("n1", N1_AT, b"i-0918f6c55e3b61d89"), ("n2", N2_AT, b"i-020b6af9246d90e92"),
    ("n3", N3_AT, b"hello, world!"), ("n4_doc", N4_AT, b"i-0ec0e572c8263d8ff"),
])
def test_flipped_signed_byte_is_refused(ev: dict[str, bytes], name: str, when: str,
                                        marker: bytes) -> None:
    data = ev[name]
    assert nitro.verify(data, opts(when))  # the positive twin
    assert refused(flip(data, data.index(marker) + 3), opts(when)).code == (
        "attestation.signature_invalid")
    assert refused(flip(data, len(data) - 1), opts(when)).code == "attestation.signature_invalid"


def test_flipped_byte_inside_the_certificate_carried_document(ev: dict[str, bytes]) -> None:
    der = ev["n4_der"]
    marker = ev["n4_doc"][40:48].hex().encode()
    at = der.index(marker)
    tampered = bytearray(der)
    tampered[at] = ord("0") if tampered[at] != ord("0") else ord("1")
    assert refused(bytes(tampered), opts(N4_AT)).code == "attestation.signature_invalid"


def test_document_lifted_into_another_certificate_is_refused(ev: dict[str, bytes]) -> None:
    """The attack attested TLS exists to stop: an enclave's document shown with the attacker's key."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    san = x509.SubjectAlternativeName([x509.DNSName(ev["n4_doc"].hex() + ".evil.example")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(t("2023-01-01T00:00:00Z")).not_valid_after(t("2024-01-01T00:00:00Z"))
            .add_extension(san, critical=False).sign(key, hashes.SHA256()))
    err = refused(cert.public_bytes(Encoding.DER), opts(N4_AT))
    assert err.code == "attestation.binding_mismatch"


def test_root_must_be_the_pinned_aws_root(ev: dict[str, bytes]) -> None:
    err = refused(ev["n2"], opts(N2_AT, trusted_roots=frozenset({"00" * 32})))
    assert err.code == "attestation.root_untrusted"


def test_nonce(ev: dict[str, bytes]) -> None:
    nonce = bytes.fromhex(nitro.parse(ev["n2"])["nonce"])
    assert nitro.verify(ev["n2"], opts(N2_AT, expected_nonce=nonce))
    assert refused(ev["n2"], opts(N2_AT, expected_nonce=flip(nonce, 0))).code == (
        "attestation.nonce_mismatch")
    assert refused(ev["n3"], opts(N3_AT, expected_nonce=b"x")).code == "attestation.nonce_mismatch"


def test_cached_chain_decides_as_the_uncached_one(ev: dict[str, bytes]) -> None:
    nitro.clear_caches()
    assert nitro.verify(ev["n2"], opts(N2_AT))
    cached = nitro.verify(ev["n2"], opts(N2_AT))
    assert "(cached verdict)" in cached.checks[1].detail
    assert refused(ev["n2"], opts(N2_LATE)).code == "attestation.certificate_expired"


def test_forged_document_under_a_test_root_and_its_bundle() -> None:
    """A document signed by a test PKI: verifies only against that root, never as AWS hardware,
    and carries the Medclave binding in user_data."""
    pki = NitroPki()
    nonce, runtime = b"\x42" * 32, {"engine": "test"}
    doc = pki.document(user_data=report_data_for(nonce, runtime), nonce=nonce)
    when = t("2025-01-01T01:00:00Z")
    assert refused(doc, VerifyOptions(now=when)).code == "attestation.root_untrusted"
    roots = frozenset({fingerprint(pki.root)})
    v = verify_raw(doc, now=when, trusted_roots=roots, nonce=nonce)
    assert v.platform == "nitro" and v.secure is False
    assert [x["code"] for x in appraisal_of(v, default_policy(), now=when).violations] == [
        "policy.platform_not_allowed"]
    bundle = EvidenceBundle(platform="nitro", evidence=base64.b64encode(doc).decode(),
                            nonce=nonce.hex(), runtime=runtime)
    assert verify_bundle(bundle, now=when, expected_nonce=nonce, trusted_roots=roots).claims[
        "runtime"] == runtime
    other = bundle.model_copy(update={"runtime": {"engine": "other"}})
    with pytest.raises(AttestationError) as info:
        verify_bundle(other, now=when, expected_nonce=nonce, trusted_roots=roots)
    assert info.value.code == "attestation.binding_mismatch"


def test_header_other_than_es384_is_refused() -> None:
    pki = NitroPki()
    doc = pki.document()
    msg = cbor2.loads(doc)
    msg[0] = cbor2.dumps({1: -7})
    with pytest.raises(AttestationError) as info:
        nitro.verify(cbor2.dumps(msg), VerifyOptions(now=t("2025-01-01T01:00:00Z")))
    assert info.value.code == "attestation.malformed"
