"""NVIDIA: the full RIM path with locally signed manifests, and the explicit OCSP provider.

No network: OCSP answers come from ``httpx.MockTransport``, signed by a CA made here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree
from signxml import XMLSigner  # type: ignore[attr-defined]
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

from medclave.attestation.core import CheckLog
from medclave.attestation.nvidia import abi, rim
from medclave.attestation.nvidia.rules import NvidiaPolicy, appraise
from medclave.attestation.nvidia.verify import verify_report
from medclave.attestation.online.ocsp import HttpxOcspProvider
from medclave.attestation.providers import check_chain_online
from medclave.attestation.x509chain import fingerprint
from medclave.errors import AttestationError
from tests.attestation._nvidia_helpers import RIM_VALID_AT, Nvidia, load

NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def nv(vectors: Path) -> Nvidia:
    return load(vectors)


# --- a local CA -----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    eku: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


class Pki:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = _cert("Test CoRIM Root", self.root_key, ca=True)
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf = _cert("Test RIM Signer", self.leaf_key, ("Test CoRIM Root", self.root_key))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


# --- locally signed RIMs: the matching path end to end --------------------------------------------

SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384 = "http://www.w3.org/2001/04/xmlenc#sha384"


def _signed_rim(pki: Pki, version: str, values: dict[int, bytes]) -> bytes:
    root = etree.Element(f"{{{SWID}}}SoftwareIdentity", nsmap={None: SWID, "ns2": SHA384})  # type: ignore[dict-item]
    root.set("name", "GH100")
    root.set("tagId", f"test-{version}")
    root.set("version", "1.0")
    meta = etree.SubElement(root, f"{{{SWID}}}Meta")
    meta.set("colloquialVersion", version)
    payload = etree.SubElement(root, f"{{{SWID}}}Payload")
    for block, value in sorted(values.items()):
        res = etree.SubElement(payload, f"{{{SWID}}}Resource")
        for attr, text in (("type", "Measurement"), ("index", str(block - 1)), ("active", "True"),
                           ("alternatives", "1"), ("name", f"m{block}"), ("size", "48")):
            res.set(attr, text)
        res.set(f"{{{SHA384}}}Hash0", value.hex())
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (pki.leaf, pki.root)]
    signed = signer.sign(root, key=pki.leaf_key, cert=pems)
    return bytes(etree.tostring(signed))


def _n1_rims(nv: Nvidia, pki: Pki, *, change: int | None = None) -> tuple[bytes, bytes]:
    blocks = dict(abi.parse_report(nv.report).measurements)
    if change is not None:
        blocks[change] = bytes(48)
    driver = _signed_rim(pki, "550.90.07", {i: v for i, v in blocks.items() if i > 20})
    vbios = _signed_rim(pki, "96.00.9F.00.01", {i: v for i, v in blocks.items() if i <= 20})
    return driver, vbios


def test_matching_rims_verify_end_to_end(nv: Nvidia, pki: Pki) -> None:
    roots = frozenset({fingerprint(pki.root)})
    result = verify_report(nv.report_text, nv.options(collateral=_n1_rims(nv, pki)),
                           rim_roots=roots)
    assert result.claims["rim_kinds"] == ["driver", "vbios"]
    assert result.checks[-1].name == "5. measurements vs RIM" and result.checks[-1].ok
    assert appraise(result.claims, NvidiaPolicy()) == ()


@pytest.mark.parametrize("block", [2, 30])
def test_one_differing_reference_is_a_mismatch(nv: Nvidia, pki: Pki, block: int) -> None:
    roots = frozenset({fingerprint(pki.root)})
    with pytest.raises(AttestationError) as info:
        verify_report(nv.report_text, nv.options(collateral=_n1_rims(nv, pki, change=block)),
                      rim_roots=roots)
    assert info.value.code == "attestation.measurement_mismatch"
    assert [m["index"] for m in info.value.context["mismatches"]] == [block]


def test_locally_signed_rim_refused_under_the_pinned_corim_root(nv: Nvidia, pki: Pki) -> None:
    with pytest.raises(AttestationError) as info:
        verify_report(nv.report_text, nv.options(collateral=_n1_rims(nv, pki)))
    assert info.value.code == "attestation.rim_invalid"
    assert "root_untrusted" in info.value.detail


def test_rim_signed_by_a_ca_certificate_refused(pki: Pki) -> None:
    signer = XMLSigner(signature_algorithm=SignatureMethod.ECDSA_SHA384,
                       digest_algorithm=DigestAlgorithm.SHA384)
    root = etree.fromstring(_signed_rim(pki, "550.90.07", {1: bytes(48)}))
    root.remove(root[-1])
    pem = pki.root.public_bytes(serialization.Encoding.PEM).decode()
    data = bytes(etree.tostring(signer.sign(root, key=pki.root_key, cert=[pem])))
    with pytest.raises(AttestationError, match="end-entity"):
        rim.verify_rim(data, now=RIM_VALID_AT, trusted_roots=frozenset({fingerprint(pki.root)}))


# --- explicit online provider on N1 ---------------------------------------------------------------


class FakeProvider:
    def __init__(self, answers: dict[str, str] | None = None, error: str | None = None) -> None:
        self.asked: list[str] = []
        self.answers = answers or {}
        self.error = error

    def certificate_status(self, cert: x509.Certificate, issuer: x509.Certificate, *,
                           now: datetime) -> Any:
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.asked.append(str(cn))
        if self.error:
            raise AttestationError(self.error, "responder down")
        return self.answers.get(str(cn), "good")


def test_online_provider_checks_device_chain_above_the_leaf(nv: Nvidia) -> None:
    provider = FakeProvider()
    result = verify_report(nv.report_text, nv.options(online=provider))
    assert result.claims["revocation_checked"] is True
    assert provider.asked == ["GH100 A01 GSP BROM", "NVIDIA GH100 Provisioner ICA 1",
                              "NVIDIA GH100 Identity"]
    assert appraise(result.claims, NvidiaPolicy(require_rim=False,
                                                require_revocation_check=True)) == ()


@pytest.mark.parametrize(("provider", "code"), [
    (FakeProvider({"NVIDIA GH100 Provisioner ICA 1": "revoked"}),
     "attestation.certificate_revoked"),
    (FakeProvider({"GH100 A01 GSP BROM": "unknown"}), "attestation.collateral_invalid"),
    (FakeProvider(error="attestation.provider_offline"), "attestation.provider_offline"),
    (object(), "attestation.provider_offline"),
])
def test_online_provider_refusals(nv: Nvidia, provider: object, code: str) -> None:
    with pytest.raises(AttestationError) as info:
        verify_report(nv.report_text, nv.options(online=provider))
    assert info.value.code == code


# --- HttpxOcspProvider on MockTransport -----------------------------------------------------------


class Responder:
    """An OCSP responder for one issuer, answering by the rules each test sets."""

    def __init__(self, issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey) -> None:
        self.issuer, self.issuer_key = issuer, issuer_key
        self.status = ocsp.OCSPCertStatus.GOOD
        self.sign_key: ec.EllipticCurvePrivateKey = issuer_key
        self.responder_cert: x509.Certificate | None = None
        self.next_update = NOW + timedelta(days=1)
        self.echo_nonce: bytes | None = None  # None: echo the request's
        self.http_status = 200
        self.body: bytes | None = None
        self.flip_signature = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.http_status != 200:
            return httpx.Response(self.http_status)
        if self.body is not None:
            return httpx.Response(200, content=self.body)
        req = ocsp.load_der_ocsp_request(request.content)
        assert request.headers["content-type"] == "application/ocsp-request"
        nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash,
            serial_number=req.serial_number, algorithm=req.hash_algorithm,
            cert_status=self.status, this_update=NOW - timedelta(hours=1),
            next_update=self.next_update,
            revocation_time=NOW - timedelta(days=2)
            if self.status == ocsp.OCSPCertStatus.REVOKED else None,
            revocation_reason=None,
        )
        signer = self.responder_cert or self.issuer
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
        if self.responder_cert is not None:
            builder = builder.certificates([self.responder_cert])
        builder = builder.add_extension(x509.OCSPNonce(self.echo_nonce or nonce), critical=False)
        der = builder.sign(self.sign_key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)
        if self.flip_signature:  # the BIT STRING signature ends the response when no certs
            der = der[:-1] + bytes((der[-1] ^ 1,))
        return httpx.Response(200, content=der)


@pytest.fixture()
def ca() -> tuple[Responder, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    issuer = _cert("Test ICA", key, ca=True)
    leaf = _cert("Test device", ec.generate_private_key(ec.SECP384R1()), ("Test ICA", key))
    return Responder(issuer, key), leaf


def _status(responder: Responder, leaf: x509.Certificate) -> str:
    with httpx.Client(transport=httpx.MockTransport(responder)) as client:
        return HttpxOcspProvider(client).certificate_status(leaf, responder.issuer, now=NOW)


def test_ocsp_good_revoked_unknown(ca: tuple[Responder, x509.Certificate]) -> None:
    responder, leaf = ca
    assert _status(responder, leaf) == "good"
    responder.status = ocsp.OCSPCertStatus.REVOKED
    assert _status(responder, leaf) == "revoked"
    responder.status = ocsp.OCSPCertStatus.UNKNOWN
    assert _status(responder, leaf) == "unknown"


def test_ocsp_delegated_responder(ca: tuple[Responder, x509.Certificate]) -> None:
    responder, leaf = ca
    key = ec.generate_private_key(ec.SECP384R1())
    responder.responder_cert = _cert("Test OCSP", key, ("Test ICA", responder.issuer_key),
                                     eku=ExtendedKeyUsageOID.OCSP_SIGNING)
    responder.sign_key = key
    assert _status(responder, leaf) == "good"
    responder.responder_cert = _cert("Test OCSP", key, ("Test ICA", responder.issuer_key),
                                     eku=ExtendedKeyUsageOID.CODE_SIGNING)
    with pytest.raises(AttestationError, match="OCSPSigning"):
        _status(responder, leaf)


def _forged(r: Responder) -> None:
    r.flip_signature = True


def _impostor(r: Responder) -> None:
    # A responder certificate named like the issuer but self-signed with another key.
    key = ec.generate_private_key(ec.SECP384R1())
    r.responder_cert = _cert("Test ICA", key, eku=ExtendedKeyUsageOID.OCSP_SIGNING)
    r.sign_key = key


def _stale(r: Responder) -> None:
    r.next_update = NOW - timedelta(minutes=1)


def _replayed(r: Responder) -> None:
    r.echo_nonce = b"\x00" * 32


def _garbage(r: Responder) -> None:
    r.body = b"\x30\x03\x0a\x01\x00" + b"junk"


@pytest.mark.parametrize("breaker", [_forged, _impostor, _stale, _replayed, _garbage])
def test_ocsp_bad_responses_refused(ca: tuple[Responder, x509.Certificate], breaker: Any) -> None:
    responder, leaf = ca
    breaker(responder)
    with pytest.raises(AttestationError) as info:
        _status(responder, leaf)
    assert info.value.code == "attestation.collateral_invalid"


def test_ocsp_unreachable_is_provider_offline(ca: tuple[Responder, x509.Certificate]) -> None:
    responder, leaf = ca
    responder.http_status = 503
    with pytest.raises(AttestationError, match="provider_offline"):
        _status(responder, leaf)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route", request=request)

    with httpx.Client(transport=httpx.MockTransport(down)) as client, \
            pytest.raises(AttestationError, match="provider_offline"):
        HttpxOcspProvider(client).certificate_status(leaf, responder.issuer, now=NOW)


def test_check_chain_online_with_httpx_provider(ca: tuple[Responder, x509.Certificate]) -> None:
    responder, leaf = ca
    log = CheckLog()
    with httpx.Client(transport=httpx.MockTransport(responder)) as client:
        check_chain_online(HttpxOcspProvider(client), [leaf, responder.issuer], now=NOW, log=log,
                           name="ocsp", skip_leaf=False)
        assert log.checks[-1].ok
        responder.status = ocsp.OCSPCertStatus.REVOKED
        with pytest.raises(AttestationError, match="certificate_revoked"):
            check_chain_online(HttpxOcspProvider(client), [leaf, responder.issuer], now=NOW,
                               log=log, name="ocsp", skip_leaf=False)
