"""Hypothesis: mutated, truncated and random TDX quotes and collateral never crash or verify."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.attestation import tdx
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.tdx import abi, collateral, pck
from medclave.attestation.x509chain import fingerprint
from medclave.errors import MedclaveError
from tests.conftest import VECTORS, at

T1 = "go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
T7 = "dcap-qvl/tdx_quote"
# MEDCLAVE_FUZZ_EXAMPLES raises the count for a long local run; CI keeps the modest default.
FUZZ = settings(max_examples=int(os.environ.get("MEDCLAVE_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

pytestmark = pytest.mark.skipif(not (VECTORS / "tdx").is_dir(), reason="TDX vectors absent")


def _read(name: str) -> bytes:
    return (VECTORS / "tdx" / name).read_bytes()


def _load() -> dict[str, bytes]:
    if not (VECTORS / "tdx").is_dir():
        return {}
    return {"t1": _read(T1), "t7": _read(T7),
            "bundle": _read("dcap-qvl/tdx_quote_collateral.json"),
            "tcbinfo": _read("go-tdx-guest/sample_tcbInfo_response"),
            "chain": _read("go-tdx-guest/tcbinfo_issuer_chain.pem")}


DATA = _load()
T7_OPTS = VerifyOptions(now=at("2025-07-01"),
                        endorsements=Endorsements(collateral=(DATA.get("bundle", b""),)))
T1_OPTS = VerifyOptions(now=at("2023-07-01"))


def _layout(data: bytes) -> tuple[int, int, int]:
    """(end of the signed/bound region, start of the PEM chain, end of signature data)."""
    q = abi.parse_quote(data)
    sig_end = len(data) - q.trailing
    pem_start = sig_end - len(q.pck_chain_pem)
    return pem_start - 6, pem_start, sig_end


def _mutate(data: bytes, offset: int, xor: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= xor
    return bytes(out)


@FUZZ
@given(st.binary(max_size=6000))
def test_random_bytes_never_crash(blob: bytes) -> None:
    assert tdx.detect(blob) in (None, "tdx")
    with pytest.raises(MedclaveError):
        tdx.parse(blob)
    with pytest.raises(MedclaveError):
        tdx.verify(blob, T1_OPTS)


@FUZZ
@given(st.data())
def test_mutated_signed_region_never_verifies(data: st.DataObject) -> None:
    quote = DATA[data.draw(st.sampled_from(["t1", "t7"]))]
    signed_end, _, _ = _layout(quote)
    offset = data.draw(st.integers(0, signed_end - 1))
    mutated = _mutate(quote, offset, data.draw(st.integers(1, 255)))
    opts = T7_OPTS if quote is DATA["t7"] else T1_OPTS
    with pytest.raises(MedclaveError):
        tdx.verify(mutated, opts)


@FUZZ
@given(st.data())
def test_mutated_pck_chain_never_verifies_a_different_chain(data: st.DataObject) -> None:
    """A PEM byte may be whitespace or padding; if the quote still verifies, nothing changed."""
    quote = DATA["t7"]
    _, pem_start, sig_end = _layout(quote)
    offset = data.draw(st.integers(pem_start, sig_end - 1))
    mutated = _mutate(quote, offset, data.draw(st.integers(1, 255)))
    try:
        result = tdx.verify(mutated, T7_OPTS)
    except MedclaveError:
        return
    original = tdx.verify(quote, T7_OPTS)
    assert result.claims == original.claims and result.tcb_status == original.tcb_status
    chain = tdx.pck_chain(abi.parse_quote(mutated))
    assert [fingerprint(c) for c in chain] \
        == [fingerprint(c) for c in tdx.pck_chain(abi.parse_quote(quote))]


@FUZZ
@given(st.data())
def test_truncated_quotes_refused(data: st.DataObject) -> None:
    quote = DATA[data.draw(st.sampled_from(["t1", "t7"]))]
    _, _, sig_end = _layout(quote)
    cut = data.draw(st.integers(0, sig_end - 1))
    with pytest.raises(MedclaveError):
        tdx.verify(quote[:cut], T1_OPTS)


@FUZZ
@given(st.data())
def test_length_fields_are_bounded(data: st.DataObject) -> None:
    quote = DATA["t7"]
    q = abi.parse_quote(quote)
    sig = len(q.signed)
    fields = {  # offset: struct format of each length field
        sig: "<I",
        sig + 4 + 128 + 2: "<I",
        sig + 4 + 134 + 384 + 64: "<H",
        sig + 4 + 134 + 384 + 64 + 2 + len(q.qe_auth_data) + 2: "<I",
    }
    offset, fmt = data.draw(st.sampled_from(sorted(fields.items())))
    size = struct.calcsize(fmt)
    original = struct.unpack_from(fmt, quote, offset)[0]
    value = data.draw(st.integers(0, (1 << (8 * size)) - 1).filter(lambda v: v != original))
    mutated = quote[:offset] + struct.pack(fmt, value) + quote[offset + size:]
    with pytest.raises(MedclaveError):
        tdx.verify(mutated, T7_OPTS)


@FUZZ
@given(st.data())
def test_mutated_collateral_never_changes_the_outcome(data: st.DataObject) -> None:
    """Any mutation is refused, ignored (tcb_status falls back) or harmless whitespace."""
    which = data.draw(st.sampled_from(["bundle", "tcbinfo"]))
    blob = DATA[which]
    offset = data.draw(st.integers(0, len(blob) - 1))
    mutated = _mutate(blob, offset, data.draw(st.integers(1, 255)))
    if which == "bundle":
        quote, now, coll = DATA["t7"], "2025-07-01", (mutated,)
    else:
        quote, now, coll = DATA["t1"], "2023-07-01", (mutated, DATA["chain"])
    opts = VerifyOptions(now=at(now), endorsements=Endorsements(collateral=coll))
    expected = tdx.verify(quote, VerifyOptions(
        now=at(now), endorsements=Endorsements(
            collateral=(blob,) if which == "bundle" else (blob, DATA["chain"])))).tcb_status
    try:
        result = tdx.verify(quote, opts)
    except MedclaveError:
        return
    assert result.tcb_status in (expected, "unknown")


@FUZZ
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["tcbInfo", "enclaveIdentity", "signature", "tcb_info", "qe_identity",
                         "tcb_info_signature", "pck_crl", "id", "version", "tcbLevels"]),
        inner, max_size=5),
    max_leaves=20))
def test_random_collateral_json(value: object) -> None:
    blob = json.dumps({"tcbInfo": value, "signature": "00" * 64}).encode()
    for candidate in (blob, json.dumps(value).encode()):
        with contextlib.suppress(MedclaveError):
            collateral.classify(candidate)


@FUZZ
@given(st.data())
def test_sgx_extension_parser(data: st.DataObject) -> None:
    q = abi.parse_quote(DATA["t7"])
    leaf = x509.load_pem_x509_certificates(q.pck_chain_pem.rstrip(b"\x00"))[0]
    ext = leaf.extensions.get_extension_for_oid(pck.SGX_EXTENSION_OID).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    der = ext.value
    choice = data.draw(st.sampled_from(["mutate", "truncate", "random"]))
    if choice == "mutate":
        blob = _mutate(der, data.draw(st.integers(0, len(der) - 1)), data.draw(st.integers(1, 255)))
    elif choice == "truncate":
        blob = der[: data.draw(st.integers(0, len(der) - 1))]
    else:
        blob = data.draw(st.binary(max_size=600))
    try:
        parsed = pck.parse_sgx_extension(blob)
    except MedclaveError:
        return
    assert len(parsed.sgx_tcb_components) == 16 and len(parsed.fmspc) == 6


def test_vectors_present_for_fuzzing(vectors: Path) -> None:
    assert DATA, "the fuzz tests need the TDX vectors"
