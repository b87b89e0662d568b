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
from medclave.attestation.dcap import collateral, pck
from medclave.attestation.tdx import abi
from medclave.attestation.x509chain import fingerprint
from medclave.errors import MedclaveError
from tests.conftest import at, need

T1 = "go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
T7 = "dcap-qvl/tdx_quote"
# MEDCLAVE_FUZZ_EXAMPLES raises the count for a long local run; CI keeps the modest default.
FUZZ = settings(max_examples=int(os.environ.get("MEDCLAVE_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

T1_OPTS = VerifyOptions(now=at("2023-07-01"))
Data = dict[str, bytes]


@pytest.fixture(scope="module")
def tdx_data(vectors: Path) -> Data:
    """The TDX vectors, through the shared ``vectors`` fixture: absent, the tests that need them
    skip, and under MEDCLAVE_REQUIRE_VECTORS=1 (CI) they fail instead of skipping."""
    root = need(vectors / "tdx", "TDX vectors")
    return {"t1": (root / T1).read_bytes(), "t7": (root / T7).read_bytes(),
            "bundle": (root / "dcap-qvl/tdx_quote_collateral.json").read_bytes(),
            "tcbinfo": (root / "go-tdx-guest/sample_tcbInfo_response").read_bytes(),
            "chain": (root / "go-tdx-guest/tcbinfo_issuer_chain.pem").read_bytes()}


def _t7_opts(d: Data) -> VerifyOptions:
    return VerifyOptions(now=at("2025-07-01"), endorsements=Endorsements(collateral=(d["bundle"],)))


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
def test_mutated_signed_region_never_verifies(tdx_data: Data, data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["t1", "t7"]))
    quote = tdx_data[which]
    signed_end, _, _ = _layout(quote)
    offset = data.draw(st.integers(0, signed_end - 1))
    mutated = _mutate(quote, offset, data.draw(st.integers(1, 255)))
    opts = _t7_opts(tdx_data) if which == "t7" else T1_OPTS
    with pytest.raises(MedclaveError):
        tdx.verify(mutated, opts)


@FUZZ
@given(st.data())
def test_mutated_pck_chain_never_verifies_a_different_chain(tdx_data: Data,
                                                           data: st.DataObject) -> None:
    """A PEM byte may be whitespace or padding; if the quote still verifies, nothing changed."""
    quote = tdx_data["t7"]
    _, pem_start, sig_end = _layout(quote)
    offset = data.draw(st.integers(pem_start, sig_end - 1))
    mutated = _mutate(quote, offset, data.draw(st.integers(1, 255)))
    try:
        result = tdx.verify(mutated, _t7_opts(tdx_data))
    except MedclaveError:
        return
    original = tdx.verify(quote, _t7_opts(tdx_data))
    assert result.claims == original.claims and result.tcb_status == original.tcb_status
    chain = tdx.pck_chain(abi.parse_quote(mutated))
    assert [fingerprint(c) for c in chain] \
        == [fingerprint(c) for c in tdx.pck_chain(abi.parse_quote(quote))]


@FUZZ
@given(st.data())
def test_truncated_quotes_refused(tdx_data: Data, data: st.DataObject) -> None:
    quote = tdx_data[data.draw(st.sampled_from(["t1", "t7"]))]
    _, _, sig_end = _layout(quote)
    cut = data.draw(st.integers(0, sig_end - 1))
    with pytest.raises(MedclaveError):
        tdx.verify(quote[:cut], T1_OPTS)


@FUZZ
@given(st.data())
def test_length_fields_are_bounded(tdx_data: Data, data: st.DataObject) -> None:
    quote = tdx_data["t7"]
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
        tdx.verify(mutated, _t7_opts(tdx_data))


@FUZZ
@given(st.data())
def test_mutated_collateral_never_changes_the_outcome(tdx_data: Data, data: st.DataObject) -> None:
    """Any mutation is refused, ignored (tcb_status falls back) or harmless whitespace."""
    which = data.draw(st.sampled_from(["bundle", "tcbinfo"]))
    blob = tdx_data[which]
    offset = data.draw(st.integers(0, len(blob) - 1))
    mutated = _mutate(blob, offset, data.draw(st.integers(1, 255)))
    if which == "bundle":
        quote, now, coll = tdx_data["t7"], "2025-07-01", (mutated,)
    else:
        quote, now, coll = tdx_data["t1"], "2023-07-01", (mutated, tdx_data["chain"])
    opts = VerifyOptions(now=at(now), endorsements=Endorsements(collateral=coll))
    expected = tdx.verify(quote, VerifyOptions(
        now=at(now), endorsements=Endorsements(
            collateral=(blob,) if which == "bundle" else (blob, tdx_data["chain"])))).tcb_status
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
def test_sgx_extension_parser(tdx_data: Data, data: st.DataObject) -> None:
    q = abi.parse_quote(tdx_data["t7"])
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


def test_vectors_present_for_fuzzing(tdx_data: Data) -> None:
    # Reached only when the vectors are there (or required): then every file must be non-empty.
    assert all(tdx_data.values()), "the fuzz tests need the TDX vectors"
