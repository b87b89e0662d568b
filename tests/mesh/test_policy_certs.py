"""The segmentation policy and identities (refusing to be empty), the claims extension's DER
(known answers, fuzzed), and reading a peer's certificate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import example, given
from hypothesis import strategies as st

from medclave.errors import InputError, MeshError
from medclave.mesh.certs import (
    MeshCA,
    PeerCert,
    decode_utf8string,
    encode_utf8string,
    make_csr,
    new_key,
    read_csr,
)
from medclave.mesh.policy import SegmentationPolicy, WorkloadId
from tests.mesh.conftest import POLICY

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_the_deployment_policy_allows_exactly_its_edges() -> None:
    policy = SegmentationPolicy.parse(POLICY)
    assert policy.edges == {("proxy", "enclave"), ("enclave", "broker"), ("enclave", "database")}
    enclave = WorkloadId.parse("medclave://stmary/enclave/e1")
    proxy = WorkloadId.parse("medclave://stmary/proxy/p1")
    policy.check(proxy, me=enclave, inbound=True)
    policy.check(enclave, me=proxy, inbound=False)
    for source, target in [("enclave", "proxy"), ("database", "enclave"), ("broker", "enclave"),
                           ("proxy", "broker"), ("proxy", "database")]:
        with pytest.raises(MeshError) as refused:
            policy.check(WorkloadId.of("stmary", source, "a"),
                         me=WorkloadId.of("stmary", target, "b"), inbound=True)
        assert refused.value.code == "mesh.peer_not_allowed"
    with pytest.raises(MeshError, match="outside trust domain"):
        policy.check(WorkloadId.of("other", "proxy", "p"), me=enclave, inbound=True)


@pytest.mark.parametrize("text", [
    'trust_domain = "stmary"\n',  # allows nothing
    'trust_domain = "stmary"\nallow = []\n',
    'trust_domain = "stmary"\n[[allow]]\nfrom = "proxy"\nto = []\n',
    'trust_domain = "stmary"\n[[allow]]\nfrom = "proxy"\nto = "mainframe"\n',
    'trust_domain = "stmary"\n[[allow]]\nfrom = "enclave"\nto = "enclave"\n',
    'trust_domain = "St Mary"\n[[allow]]\nfrom = "proxy"\nto = "enclave"\n',
    '[[allow]]\nfrom = "proxy"\nto = "enclave"\n',
    'trust_domain = "stmary"\nextra = 1\n[[allow]]\nfrom = "proxy"\nto = "enclave"\n',
    "not toml [",
])
def test_a_policy_that_is_empty_or_malformed_is_refused(text: str) -> None:
    with pytest.raises(InputError) as refused:
        SegmentationPolicy.parse(text)
    assert refused.value.code == "config.invalid"


@pytest.mark.parametrize("text", [
    "medclave://stmary/enclave", "medclave://stmary/enclave/e1/x", "spiffe://stmary/enclave/e1",
    "medclave://stmary/root/e1", "medclave://StMary/enclave/e1", "medclave://stmary/enclave/",
    "medclave://stmary/enclave/" + "a" * 300, "medclave://stmary/enclave/e 1",
])
def test_malformed_identities_are_refused(text: str) -> None:
    with pytest.raises(MeshError) as refused:
        WorkloadId.parse(text)
    assert refused.value.code == "mesh.identity_invalid"


# Known answers, by hand from X.690 §8.1.3 and §8.23: tag 0x0C, then the length.
@pytest.mark.parametrize(("text", "der"), [
    ("", "0c00"),
    ("abc", "0c03616263"),
    ("a" * 127, "0c7f" + "61" * 127),
    ("a" * 128, "0c8180" + "61" * 128),
    ("a" * 256, "0c820100" + "61" * 256),
])
def test_the_claims_encoding_known_answers(text: str, der: str) -> None:
    assert encode_utf8string(text).hex() == der
    assert decode_utf8string(bytes.fromhex(der)) == text


@pytest.mark.parametrize("der", ["", "0c", "0403616263", "0c0461626364ff", "0c8103616263",
                                 "0c82007f" + "61" * 127, "0c83000003616263", "0c02c328",
                                 "0c0361626364"])
def test_non_der_claims_are_refused(der: str) -> None:
    with pytest.raises(MeshError):
        decode_utf8string(bytes.fromhex(der))


@given(st.binary(max_size=300))
def test_the_claims_decoder_takes_any_bytes(data: bytes) -> None:
    try:
        text = decode_utf8string(data)
    except MeshError:
        return
    assert encode_utf8string(text) == data  # accepted only if it is the one DER encoding


@given(st.text(max_size=400))
def test_the_claims_encoding_round_trips(text: str) -> None:
    assert decode_utf8string(encode_utf8string(text)) == text


def test_a_certificate_request_must_be_signed_by_its_key() -> None:
    identity = WorkloadId.of("stmary", "enclave", "e1")
    key = new_key()
    pem = make_csr(key, identity).decode()
    assert read_csr(pem)[0] == identity
    body = bytearray(pem.encode())
    lines = pem.splitlines()
    # flip one byte of the base64 signature area (the last full line)
    target = "\n".join(lines[:-2]).encode()
    idx = len(target) + 5
    body[idx] = ord("A") if body[idx] != ord("A") else ord("B")
    with pytest.raises(MeshError) as refused:
        read_csr(body.decode())
    assert refused.value.code == "mesh.csr_invalid"
    with pytest.raises(MeshError):
        read_csr("x" * 9000)


def test_a_peer_certificate_names_one_identity() -> None:
    ca = MeshCA.generate("stmary", now=NOW)
    key = new_key()
    identity = WorkloadId.of("stmary", "proxy", "p1")
    cert = ca.issue(identity, key.public_key(), claims={"measurement": ["ab"]}, now=NOW,
                    lifetime=timedelta(hours=1))
    peer = PeerCert.from_der(cert.public_bytes(Encoding.DER))
    assert peer.identity == identity and peer.claims == {"measurement": frozenset({"ab"})}
    assert peer.not_after == NOW + timedelta(hours=1)
    assert cert.verify_directly_issued_by(ca.certificate) is None
    # CA's own certificate has no identity URI
    with pytest.raises(MeshError) as refused:
        PeerCert.from_der(ca.certificate.public_bytes(Encoding.DER))
    assert refused.value.code == "mesh.peer_unauthenticated"
    assert isinstance(cert.extensions.get_extension_for_class(x509.BasicConstraints).value,
                      x509.BasicConstraints)


@given(st.text(max_size=600))
def test_identities_parse_or_refuse_with_their_code(text: str) -> None:
    try:
        identity = WorkloadId.parse(text)
    except MeshError as exc:
        assert exc.code == "mesh.identity_invalid"
        return
    assert identity.uri == text


_CSR = make_csr(new_key(), WorkloadId.of("stmary", "proxy", "p1")).decode()


@given(st.integers(min_value=0, max_value=len(_CSR) - 1), st.characters(codec="ascii"))
@example(where=48, char="B")  # a CSR version of 4 (x509.InvalidVersion), found by fuzzing
def test_a_mangled_certificate_request_is_refused_with_a_code(where: int, char: str) -> None:
    mangled = _CSR[:where] + char + _CSR[where + 1:]
    try:
        read_csr(mangled)
    except MeshError as exc:
        assert exc.code in ("mesh.csr_invalid", "mesh.identity_invalid")


@given(st.binary(max_size=2048))
def test_peer_certificate_bytes_parse_or_refuse_with_a_code(data: bytes) -> None:
    try:
        PeerCert.from_der(data)
    except MeshError as exc:
        assert exc.code in ("mesh.peer_unauthenticated", "mesh.identity_invalid")
