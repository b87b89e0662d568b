"""Hypothesis: mutated or random NVIDIA evidence and RIMs never crash and never verify."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medclave.attestation import nvidia
from medclave.attestation.nvidia import abi, rim
from medclave.attestation.nvidia.verify import parse_tcb_info, verify_report
from medclave.errors import AttestationError
from tests.attestation._nvidia_helpers import RIM_VALID_AT, Nvidia, load

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def nv(vectors: Path) -> Nvidia:
    return load(vectors)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Flips, overwrites, truncations, insertions and deletions of ``data``."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[pos] ^= draw(st.integers(1, 255))
        elif kind == "set" and out:
            out[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and out:
            del out[pos:pos + draw(st.integers(1, 8))]
    return bytes(out)


def _never_verifies(data: bytes, nv: Nvidia) -> None:
    with contextlib.suppress(AttestationError):
        nvidia.parse(data)
    with pytest.raises(AttestationError):
        verify_report(data, nv.options(), chain_cache=None)


@FUZZ
@given(data=st.data())
def test_mutated_binary_evidence_never_verifies(nv: Nvidia, data: st.DataObject) -> None:
    mutated = data.draw(mutations(nv.report))
    assume(mutated != nv.report)
    _never_verifies(mutated, nv)


@FUZZ
@given(data=st.data())
def test_mutated_hex_evidence_never_verifies(nv: Nvidia, data: st.DataObject) -> None:
    mutated = data.draw(mutations(nv.report_text))
    try:
        same = abi.decode_evidence(mutated) == nv.report  # e.g. only a hex digit's case changed
    except AttestationError:
        same = False
    assume(not same)
    _never_verifies(mutated, nv)


@FUZZ
@given(blob=st.binary(max_size=5000))
def test_random_bytes_never_crash(nv: Nvidia, blob: bytes) -> None:
    assert nvidia.detect(blob) in (None, "nvidia")
    _never_verifies(blob, nv)
    _never_verifies(b"11e001ff" + blob.hex().encode(), nv)


@FUZZ
@given(blob=st.binary(max_size=1200))
def test_opaque_and_tcb_info_parsers_are_total(blob: bytes) -> None:
    for parser in (abi.parse_opaque, parse_tcb_info):
        with contextlib.suppress(AttestationError):
            parser(blob)
    with contextlib.suppress(AttestationError):
        abi.opaque_claims(abi.parse_opaque(blob))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_rim_never_verifies(nv: Nvidia, data: st.DataObject) -> None:
    original = nv.rim("1010_0200_882_96005E0001_PROD.swidtag")
    mutated = data.draw(mutations(original))
    assume(mutated != original)
    try:
        manifest = rim.verify_rim(mutated, now=RIM_VALID_AT)
    except AttestationError:
        return
    # XML canonicalisation makes some byte changes meaningless (whitespace between attributes,
    # quote style, the certificates' base64 line breaks); those may verify, but then what was
    # signed, and so every reference value, must be exactly the original's.
    reference = rim.verify_rim(original, now=RIM_VALID_AT)
    assert manifest.measurements == reference.measurements
    assert (manifest.kind, manifest.version, manifest.tag_id) == (
        reference.kind, reference.version, reference.tag_id)


@FUZZ
@given(offset=st.integers(0, 4116), bit=st.integers(0, 7))
def test_any_single_bit_flip_is_refused(nv: Nvidia, offset: int, bit: int) -> None:
    report = nv.report
    assume(offset < len(report))
    tampered = bytearray(report)
    tampered[offset] ^= 1 << bit
    with pytest.raises(AttestationError) as info:
        verify_report(bytes(tampered), nv.options(), chain_cache=None)
    # Either the layout no longer parses or the signature no longer verifies.
    assert info.value.code in {
        "attestation.malformed", "attestation.unsupported_version", "attestation.signature_invalid",
    }
