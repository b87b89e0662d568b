"""Hypothesis: mutated vTPM evidence never crashes the verifier and never verifies.

Mutations touch only bytes that are signed, hashed into a signed value, or length/type fields
that parsing checks. The HCLA header words after the magic and the request ``version`` are not
signed by anyone and carry no claim (Azure documents none), so altering them changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.attestation import vtpm
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.vtpm import hcl, tpm2
from medclave.attestation.x509chain import load_certificates
from medclave.errors import MedclaveError
from tests.attestation import _vtpm_helpers as h
from tests.conftest import at

NOW = at("2025-06-01")
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Regions of the HCL report whose every byte is authenticated or checked (offset, length).
SNP_SIGNED = (hcl.HW_REPORT_OFFSET, 0x2A0 + 144)  # report body and signature R, S
REQUEST_CHECKED = ((hcl.REQUEST_OFFSET, 4), (hcl.REQUEST_OFFSET + 8, 12))


@pytest.fixture(scope="module")
def material(vectors: Path) -> dict[str, Any]:
    d = vectors / h.SNP_DIR
    v1 = (d / "evidence-v1.json").read_bytes()
    obj, report, message = h.v1_fields(v1)
    var_len = len(hcl.parse_hcl_report(report).var_data)
    milan = tuple(load_certificates((vectors / "sev-snp/amd-roots/ask_ark_milan.pem").read_bytes()))
    tpm_ev = (vectors / "vtpm/other/trustee_tpm_evidence.json").read_bytes()
    return {
        "v0": (d / "evidence-v0.json").read_bytes(), "v1": v1, "obj": obj, "report": report,
        "message": message, "var_len": var_len, "tpm": tpm_ev,
        "options": VerifyOptions(now=NOW, endorsements=Endorsements(certificates=milan),
                                 expected_nonce=h.CHALLENGE),
        "tpm_options": VerifyOptions(now=NOW, trusted_roots=frozenset(
            {vtpm.parse(tpm_ev)["ak_public"]})),
    }


def _refused(data: bytes, options: VerifyOptions) -> None:
    """Only a MedclaveError may come out, and verification must not succeed."""
    try:
        vtpm.verify(data, options)
    except MedclaveError:
        return
    raise AssertionError("mutated evidence verified")


def _harmless(fn: Any, *args: Any) -> None:
    with contextlib.suppress(MedclaveError):
        fn(*args)


def test_originals_verify(material: dict[str, Any]) -> None:
    """The mutation tests below mean something only if the untouched evidence verifies."""
    assert vtpm.verify(material["v1"], material["options"]).platform == "az-snp-vtpm"
    assert vtpm.verify(material["tpm"], material["tpm_options"]).platform == "tpm"


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    assert vtpm.detect(data) in (None, "az-snp-vtpm", "az-tdx-vtpm", "tpm")
    _harmless(vtpm.parse, data)
    _refused(data, VerifyOptions(now=NOW))
    for parser in (tpm2.parse_attest, tpm2.parse_signature, hcl.parse_hcl_report,
                   hcl.parse_var_data):
        _harmless(parser, data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                  max_size=5),
    max_leaves=25,
)


@FUZZ
@given(path=st.sampled_from([("version",), ("tpm_quote",), ("tpm_quote", "message"),
                             ("tpm_quote", "signature"), ("tpm_quote", "pcrs"), ("hcl_report",),
                             ("vcek",)]),
       value=_json, drop=st.booleans())
def test_json_member_replaced_or_dropped(material: dict[str, Any], path: tuple[str, ...],
                                         value: Any, drop: bool) -> None:
    obj = json.loads(material["v1"])
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    elif value == parent[path[-1]] or (path == ("version",) and value == 2):
        return  # no change (v2 is the same format as v1); not a mutation
    else:
        parent[path[-1]] = value
    _refused(h.dumps(obj), material["options"])
    _harmless(vtpm.parse, h.dumps(obj))


@FUZZ
@given(extra=st.dictionaries(st.text(min_size=1, max_size=8), _json, min_size=1, max_size=3),
       junk=st.binary(max_size=64))
def test_json_unknown_members_and_junk(material: dict[str, Any], extra: dict[str, Any],
                                       junk: bytes) -> None:
    obj = json.loads(material["v1"])
    added = {k: v for k, v in extra.items() if k not in obj}
    if added:  # keys the evidence already has are no mutation
        obj.update(added)
        _refused(h.dumps(obj), material["options"])
    text = material["v1"]
    _refused(text[: len(junk) % len(text)] + junk, material["options"])


@st.composite
def _hcl_offsets(draw: st.DrawFn, var_len: int) -> int:
    regions = [SNP_SIGNED, *REQUEST_CHECKED, (hcl.VAR_DATA_OFFSET, var_len)]
    start, length = draw(st.sampled_from(regions))
    return start + draw(st.integers(0, length - 1))


@FUZZ
@given(data=st.data(), mask=st.integers(1, 255))
def test_flipped_hcl_report_byte(material: dict[str, Any], data: st.DataObject, mask: int) -> None:
    offset = data.draw(_hcl_offsets(material["var_len"]))
    report = bytearray(material["report"])
    report[offset] ^= mask
    _refused(h.with_hcl(material["v1"], bytes(report)), material["options"])


@FUZZ
@given(offset=st.integers(0, 10_000), mask=st.integers(1, 255), where=st.sampled_from(
    ["message", "signature", "pcr"]), cut=st.booleans())
def test_flipped_or_truncated_quote(material: dict[str, Any], offset: int, mask: int,
                                    where: str, cut: bool) -> None:
    obj = json.loads(material["v1"])
    quote = obj["tpm_quote"]
    if where == "pcr":
        index = offset % len(quote["pcrs"])
        blob = bytearray(bytes.fromhex(quote["pcrs"][index]))
    else:
        blob = bytearray(bytes.fromhex(quote[where]))
    at_ = offset % len(blob)
    if cut:
        blob = blob[:at_]
    else:
        blob[at_] ^= mask
    if where == "pcr":
        quote["pcrs"][index] = blob.hex()
    else:
        quote[where] = blob.hex()
    _refused(h.dumps(obj), material["options"])


@FUZZ
@given(offset=st.integers(0, 10_000), mask=st.integers(1, 255),
       where=st.sampled_from(["message", "signature", "ak_public", "pcr"]))
def test_flipped_plain_tpm_evidence(material: dict[str, Any], offset: int, mask: int,
                                    where: str) -> None:
    obj = json.loads(material["tpm"])
    quote = obj["tpm_quote"]
    if where == "pcr":
        index = offset % len(quote["pcrs"])
        blob = bytearray(bytes.fromhex(quote["pcrs"][index]))
        blob[offset % len(blob)] ^= mask
        quote["pcrs"][index] = blob.hex()
    else:
        holder = obj if where == "ak_public" else quote
        blob = bytearray(base64.b64decode(holder[where]))
        blob[offset % len(blob)] ^= mask
        holder[where] = base64.b64encode(bytes(blob)).decode()
    _refused(h.dumps(obj), material["tpm_options"])


@FUZZ
@given(offset=st.integers(0, 10_000), value=st.integers(-5, 300))
def test_v0_byte_arrays_mutated(material: dict[str, Any], offset: int, value: int) -> None:
    obj = json.loads(material["v0"])
    report = obj["report"]
    # Signed body and signature of the SNP report, or the variable data.
    region = [*range(SNP_SIGNED[0], SNP_SIGNED[0] + SNP_SIGNED[1]),
              *range(hcl.VAR_DATA_OFFSET, hcl.VAR_DATA_OFFSET + material["var_len"])]
    at_ = region[offset % len(region)]
    if report[at_] == value:
        return
    report[at_] = value
    _refused(h.dumps(obj), material["options"])


@pytest.mark.parametrize("data", [
    b"[" * 200_000,  # recursion depth
    b'{"a": ' + b"1" * 5000 + b"}",  # integer string conversion limit
    b'{"quote": 1e400, "report": [], "vcek": ""}',  # float overflow
    b'{"quote": NaN, "report": [], "vcek": ""}',
    b"\xff\xfe{}",
])
def test_hostile_json_is_malformed(data: bytes) -> None:
    assert vtpm.detect(data) is None
    with pytest.raises(MedclaveError) as info:
        vtpm.verify(data, VerifyOptions(now=NOW))
    assert info.value.code == "attestation.malformed"
