"""Hypothesis: mutated, truncated and random evidence of the SGX, Nitro, CCA and GCP platforms,
and random CBOR for the COSE reader, never crash, hang or verify."""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.attestation import cca, cose, nitro, registry, sgx
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.gcp import cs, pb, tpm
from medclave.errors import MedclaveError
from tests.conftest import need

FUZZ = settings(max_examples=int(os.environ.get("MEDCLAVE_FUZZ_EXAMPLES", "120")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
Data = dict[str, bytes]


@pytest.fixture(scope="module")
def data(vectors: Path) -> Data:
    n = need(vectors / "nitro", "Nitro vectors") / "evervault"
    s = need(vectors / "sgx", "SGX vectors")
    return {"sgx": (s / "dcap-qvl/sgx_quote").read_bytes(),
            "sgx_coll": (s / "dcap-qvl/sgx_quote_collateral.json").read_bytes(),
            "gcp": (need(vectors / "gcp-confidential-space", "GCP vectors") / "atlas-pca"
                    / "prod-token.jwt").read_bytes(),
            "jwks": (vectors / "gcp-confidential-space/atlas-pca/google-cs-jwks.json").read_bytes(),
            "cca": (need(vectors / "cca", "CCA vectors") / "trustee/cca-example-token.cbor")
            .read_bytes(),
            "cpak": (vectors / "cca/ccatoken/cca_platform.pub").read_bytes(),
            "gce": (vectors / "gcp-confidential-space/go-tpm-tools/gce-cos-85-nonce9009.pb")
            .read_bytes(),
            "nitro": (n / "valid-attestation-doc-bytes").read_bytes(),
            "nitro_tls": (n / "non-debug-cert-containing-attestation-document-18-1-23-der.crt")
            .read_bytes()}


def _never_crashes(fn: Callable[[], object]) -> None:
    start = time.perf_counter()
    with contextlib.suppress(MedclaveError):
        fn()
    # generous: the machine is shared; a real hang (unbounded input) takes far longer
    assert time.perf_counter() - start < 10.0


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=64)
    | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.integers(-10, 10) | st.text(max_size=8), inner, max_size=5)
    | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 18, 24, 258, 399, 55799]), inner),
    max_leaves=30)


@FUZZ
@given(cbor_values)
def test_cose_reader_on_random_cbor(value: object) -> None:
    encoded = cbor2.dumps(value)
    _never_crashes(lambda: cose.decode_sign1(encoded, what="fuzz"))
    _never_crashes(lambda: cose.loads(encoded, what="fuzz", tags=frozenset({18, 399})))


@FUZZ
@given(st.binary(max_size=512))
def test_cose_reader_on_random_bytes(blob: bytes) -> None:
    _never_crashes(lambda: cose.loads(blob, what="fuzz", tags=frozenset({18})))
    _never_crashes(lambda: registry.detect(blob))


def test_deep_nesting_is_bounded() -> None:
    deep = b"\x81" * 100_000 + b"\x00"
    with pytest.raises(MedclaveError):
        cose.loads(deep, what="deep")
    huge = b"\x9b" + (2**62).to_bytes(8, "big")  # an array claiming 2^62 items
    with pytest.raises(MedclaveError):
        cose.loads(huge, what="huge")


NITRO_OPTS = VerifyOptions(now=datetime(2022, 10, 13, 9, 30, tzinfo=UTC))


@FUZZ
@given(st.data())
def test_nitro_mutations_never_verify(data: Data, draw: st.DataObject) -> None:
    doc = data["nitro"]
    offset = draw.draw(st.integers(0, len(doc) - 1))
    xor = draw.draw(st.integers(1, 255))
    mutated = bytearray(doc)
    mutated[offset] ^= xor
    cut = draw.draw(st.integers(0, len(doc)))
    for blob in (bytes(mutated), doc[:cut] if cut < len(doc) else b""):
        try:
            nitro.verify(blob, NITRO_OPTS)
        except MedclaveError:
            continue
        # A flip in an unsigned part (the unprotected map is empty; CBOR lengths are structural)
        # can only verify if it leaves the signed bytes unchanged.
        assert nitro.signed_bytes(blob) == nitro.signed_bytes(doc)


@FUZZ
@given(st.integers(0, 20000), st.integers(1, 255))
def test_nitro_tls_certificate_mutations(data: Data, offset: int, xor: int) -> None:
    blob = bytearray(data["nitro_tls"])
    blob[offset % len(blob)] ^= xor
    _never_crashes(lambda: nitro.verify(bytes(blob), VerifyOptions(
        now=datetime(2023, 1, 18, 14, tzinfo=UTC))))
    _never_crashes(lambda: registry.detect(base64.b64encode(bytes(blob))))


SGX_AT = datetime(2025, 7, 1, tzinfo=UTC)


@FUZZ
@given(st.integers(0, 4599), st.integers(1, 255), st.integers(0, 4600))
def test_sgx_mutations_never_crash_or_verify_changed_signed_bytes(
        data: Data, offset: int, xor: int, cut: int) -> None:
    quote = data["sgx"]
    mutated = bytearray(quote)
    mutated[offset] ^= xor
    opts = VerifyOptions(now=SGX_AT, endorsements=Endorsements(collateral=(data["sgx_coll"],)))
    for blob in (bytes(mutated), quote[:cut], bytes(mutated).hex().encode()):
        try:
            result = sgx.verify(blob, opts)
        except MedclaveError:
            continue
        # Only a byte outside everything signed or bound (none in this quote) could pass.
        assert result.evidence_digest == sgx.verify(quote, opts).evidence_digest


@FUZZ
@given(st.binary(min_size=0, max_size=2048))
def test_sgx_collateral_never_crashes(data: Data, blob: bytes) -> None:
    opts = VerifyOptions(now=SGX_AT, endorsements=Endorsements(collateral=(blob,)))
    _never_crashes(lambda: sgx.verify(data["sgx"], opts))


@FUZZ
@given(st.integers(0, 4000), st.sampled_from(b"AQZaz09-_.=!"), st.integers(0, 4000))
def test_gcp_token_mutations(data: Data, offset: int, char: int, cut: int) -> None:
    token = bytearray(data["gcp"].strip())
    original = bytes(token)
    token[offset % len(token)] = char
    opts = VerifyOptions(now=datetime(2026, 10, 8, 22, 30, tzinfo=UTC),
                         endorsements=Endorsements(keys=(data["jwks"],)))
    for blob in (bytes(token), original[:cut]):
        try:
            result = cs.verify(blob, opts)
        except MedclaveError:
            continue
        assert result.evidence_digest == cs.verify(original, opts).evidence_digest


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_gcp_random_tokens_and_jwks(token: bytes, jwks: bytes) -> None:
    blob = b"eyJ" + base64.urlsafe_b64encode(token).rstrip(b"=")
    opts = VerifyOptions(now=datetime(2026, 10, 8, 22, 30, tzinfo=UTC),
                         endorsements=Endorsements(keys=(b"{" + jwks,)))
    _never_crashes(lambda: cs.verify(blob, opts))
    _never_crashes(lambda: registry.detect(blob))


@FUZZ
@given(st.integers(0, 2233), st.integers(1, 255), st.integers(0, 2234))
def test_cca_mutations(data: Data, offset: int, xor: int, cut: int) -> None:
    token = data["cca"]
    mutated = bytearray(token)
    mutated[offset] ^= xor
    opts = VerifyOptions(now=datetime(2026, 1, 1, tzinfo=UTC),
                         endorsements=Endorsements(keys=(data["cpak"],)))
    for blob in (bytes(mutated), token[:cut]):
        try:
            result = cca.verify(blob, opts)
        except MedclaveError:
            continue
        assert result.evidence_digest == cca.verify(token, opts).evidence_digest


@FUZZ
@given(st.integers(0, 29601), st.integers(1, 255), st.integers(0, 29602))
def test_gce_attestation_mutations(data: Data, offset: int, xor: int, cut: int) -> None:
    blob = bytearray(data["gce"])
    blob[offset] ^= xor
    opts = VerifyOptions(now=datetime(2025, 1, 1, tzinfo=UTC))
    for candidate in (bytes(blob), data["gce"][:cut]):
        _never_crashes(functools.partial(tpm.verify, candidate, opts))
        _never_crashes(functools.partial(registry.detect, candidate))


@FUZZ
@given(st.binary(max_size=256))
def test_protobuf_reader_on_random_bytes(blob: bytes) -> None:
    _never_crashes(lambda: pb.fields(blob))
    _never_crashes(lambda: tpm.decode(b"\x0a" + blob))
