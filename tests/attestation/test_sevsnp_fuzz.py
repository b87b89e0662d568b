"""Mutated and random SNP input never crashes with anything but a MedclaveError, never hangs
and never verifies."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.attestation import sevsnp
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.sevsnp import abi
from medclave.attestation.sevsnp.certs import parse_cert_table
from medclave.attestation.x509chain import cert_der, load_certificates
from medclave.errors import MedclaveError
from tests.conftest import VECTORS, at

SNP = VECTORS / "sev-snp"
NOW = at("2025-07-01")
ROWS = {
    "S1": ("go-sev-guest/attestation.bin",
           ("go-sev-guest/vcek.testcer", "amd-roots/ask_ark_milan.pem")),
    "S3": ("trustee/test-report.bin", ("trustee/test-vcek.der", "amd-roots/ask_ark_milan.pem")),
    "S4": ("trustee/test-vlek-report.bin",
           ("trustee/test-vlek.der", "amd-roots/ask_ark_milan_vlek.pem")),
    "S5": ("trustee/e2e-genoa-report.DERIVED.bin",
           ("trustee/e2e-genoa-vcek.DERIVED.der", "amd-roots/ask_ark_genoa.pem")),
}
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load(name: str) -> tuple[bytes, VerifyOptions]:
    report, chain = ROWS[name]
    certs = tuple(c for rel in chain for c in load_certificates((SNP / rel).read_bytes()))
    return (SNP / report).read_bytes(), VerifyOptions(
        now=NOW, endorsements=Endorsements(certificates=certs))


@pytest.fixture(scope="module")
def rows(vectors: Path) -> dict[str, tuple[bytes, VerifyOptions]]:
    return {name: _load(name) for name in ROWS}


mutation = st.lists(
    st.tuples(st.integers(0, abi.REPORT_SIZE - 1), st.integers(1, 255)), min_size=1, max_size=8
)


def _apply(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for offset, mask in edits:
        out[offset] ^= mask
    return bytes(out)


def _never_verifies(data: bytes, options: VerifyOptions) -> None:
    with contextlib.suppress(MedclaveError):
        sevsnp.parse(data)
    with pytest.raises(MedclaveError):
        sevsnp.verify(data, options)


@FUZZ
@given(name=st.sampled_from(sorted(ROWS)), edits=mutation)
def test_mutated_reports_never_verify(
    rows: dict[str, tuple[bytes, VerifyOptions]], name: str, edits: list[tuple[int, int]]
) -> None:
    raw, options = rows[name]
    mutated = _apply(raw, edits)
    if mutated == raw:
        return
    assert sevsnp.detect(mutated) in ("sev-snp", None)
    _never_verifies(mutated, options)


@FUZZ
@given(name=st.sampled_from(sorted(ROWS)), cut=st.integers(0, abi.REPORT_SIZE - 1),
       tail=st.binary(max_size=64))
def test_truncated_or_extended_reports(
    rows: dict[str, tuple[bytes, VerifyOptions]], name: str, cut: int, tail: bytes
) -> None:
    raw, options = rows[name]
    for data in (raw[:cut], raw + tail if tail else raw[:cut] + b"\x00"):
        if data == raw:
            continue
        assert sevsnp.detect(data) in ("sev-snp", None)
        _never_verifies(data, options)


@FUZZ
@given(data=st.binary(max_size=3 * abi.REPORT_SIZE))
def test_random_bytes(rows: dict[str, tuple[bytes, VerifyOptions]], data: bytes) -> None:
    assert sevsnp.detect(data) in ("sev-snp", None)
    _never_verifies(data, rows["S1"][1])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 2 * abi.REPORT_SIZE - 1),
                                st.sampled_from(b"0123456789abcdefXYZ \n\x00")),
                      min_size=1, max_size=6))
def test_mutated_hex_text(rows: dict[str, tuple[bytes, VerifyOptions]],
                          edits: list[tuple[int, int]]) -> None:
    raw, options = rows["S1"]
    text = bytearray(raw.hex().encode())
    for offset, char in edits:
        text[offset] = char
    try:
        decoded = abi.report_bytes(bytes(text))
    except MedclaveError:
        decoded = None
    if decoded == raw:
        return
    _never_verifies(bytes(text), options)


@FUZZ
@given(data=st.binary(max_size=512), entries=st.integers(0, 20))
def test_cert_table_parser_is_bounded(data: bytes, entries: int) -> None:
    import struct
    import uuid

    header = b"".join(uuid.uuid4().bytes + struct.pack("<II", (i * 7919) % 600, (i * 131) % 300)
                      for i in range(entries))
    for blob in (data, header + data, header + bytes(24) + data):
        with contextlib.suppress(MedclaveError):
            parse_cert_table(blob)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1,
                      max_size=3))
def test_mutated_vcek_never_verifies(rows: dict[str, tuple[bytes, VerifyOptions]],
                                     edits: list[tuple[int, int]]) -> None:
    raw, options = rows["S1"]
    vcek, ask, ark = options.endorsements.certificates
    der = bytearray(cert_der(vcek))
    for offset, mask in edits:
        der[offset % len(der)] ^= mask
    if bytes(der) == cert_der(vcek):
        return
    try:
        mutated = load_certificates(bytes(der))
    except MedclaveError:
        return
    bad = VerifyOptions(now=NOW, endorsements=Endorsements(certificates=(*mutated, ask, ark)))
    with pytest.raises(MedclaveError):
        sevsnp.verify(raw, bad)
