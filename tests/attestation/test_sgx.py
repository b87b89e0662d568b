"""Intel SGX DCAP quotes X1-X3 of the vectors MANIFEST, the 2025 TCB Signing re-issue, TCB level
matching, and the refused twin of each."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from medclave.attestation import registry, sgx
from medclave.attestation.binding import report_data_for
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.policy import appraisal_of, default_policy, parse_policy
from medclave.attestation.sgx import abi
from medclave.attestation.verifier import verify_bundle
from medclave.errors import AttestationError
from medclave.protocol.evidence import EvidenceBundle
from tests.attestation._tdx_forge import ForgePki
from tests.conftest import flip

X1_AT, X2_AT = "2025-07-01T00:00:00Z", "2025-08-20T00:00:00Z"


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.fixture(scope="module")
def v(vectors: Path) -> dict[str, bytes]:
    s = vectors / "sgx"
    return {
        "x1": (s / "dcap-qvl/sgx_quote").read_bytes(),
        "x1_coll": (s / "dcap-qvl/sgx_quote_collateral.json").read_bytes(),
        "chain2025": (s / "dcap-qvl/tcb_signing_chain.DERIVED.pem").read_bytes(),
        "x2_hex": (s / "automata/quotev3.hex").read_bytes(),
        "x2_tcb": (s / "automata/sgx_tcbinfov3_00606a000000.json").read_bytes(),
        "x2_qe": (s / "automata/sgx_qeidentity_v4.json").read_bytes(),
        "x2_pck_crl": (s / "automata/platform_crl.der").read_bytes(),
        "x2_root_crl": (s / "automata/intel_root_ca_crl.der").read_bytes(),
        "x3": (s / "automata/quote_sgx.bin").read_bytes(),
        "old_chain": (vectors / "tdx/go-tdx-guest/tcbinfo_issuer_chain.pem").read_bytes(),
        "tdx_coll": (vectors / "tdx/dcap-qvl/tdx_quote_collateral.json").read_bytes(),
        "tdx_quote": (vectors / "tdx/dcap-qvl/tdx_quote").read_bytes(),
    }


def opts(when: str, collateral: Sequence[bytes] = (), roots: frozenset[str] | None = None,
         ) -> VerifyOptions:
    return VerifyOptions(now=t(when), endorsements=Endorsements(collateral=tuple(collateral)),
                         trusted_roots=roots)


def x2_coll(v: dict[str, bytes], chain: str = "chain2025") -> list[bytes]:
    return [v["x2_tcb"], v["x2_qe"], v["x2_pck_crl"], v["x2_root_crl"], v[chain]]


def refused(data: bytes, options: VerifyOptions) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        sgx.verify(data, options)
    return info.value


def test_x1_dcap_qvl_bundle(v: dict[str, bytes]) -> None:
    assert registry.detect(v["x1"]) == "sgx"
    r = sgx.verify(v["x1"], opts(X1_AT, [v["x1_coll"]]))
    c = r.claims
    assert r.tcb_status == "ConfigurationAndSWHardeningNeeded" and r.secure
    assert c["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert c["mrenclave"].startswith("33d8736d") and c["mrenclave"].endswith("60452fbb")
    assert c["mrsigner"].startswith("815f42f1") and c["mrsigner"].endswith("f9a3e0e6")
    assert (c["isvprodid"], c["isvsvn"], c["debug"]) == (0, 0, False)
    assert c["attributes"].startswith("05")
    assert bytes.fromhex(c["report_data"]) == b"Hello, world!".ljust(64, b"\0")
    assert (c["fmspc"], c["pce_id"], c["pce_svn"]) == ("00a067110000", "0000", 13)
    assert c["pck_tcb_components"][:7] == [11, 11, 2, 2, 255, 1, 0]
    assert c["qe_isvsvn"] == 10 and c["revocation_checked"] is True
    assert "5d. QE identity" in [x.name for x in r.checks]
    assert r.checks[-1].detail.endswith("UpToDate")
    assert appraisal_of(r, default_policy(), now=t(X1_AT)).accepted


def test_x2_intel_pcs_responses_and_the_2025_tcb_signing_chain(v: dict[str, bytes]) -> None:
    assert registry.detect(v["x2_hex"]) == "sgx"
    r = sgx.verify(v["x2_hex"], opts(X2_AT, x2_coll(v)))
    c = r.claims
    assert r.tcb_status == "SWHardeningNeeded" and c["advisory_ids"] == ["INTEL-SA-00615"]
    assert c["mrenclave"].startswith("a4f45c39") and c["mrenclave"].endswith("534f61cd")
    assert c["mrsigner"].startswith("8f2dbc0f") and c["mrsigner"].endswith("2546132c")
    assert c["report_data"] == "00" * 64 and c["debug"] is False
    assert c["fmspc"] == "00606a000000" and c["pck_tcb_components"][:8] == [14, 14, 3, 3, 255,
                                                                             255, 1, 0]
    assert c["qe_isvsvn"] == 9 and c["revocation_checked"] is True
    assert "Platform CA" in r.checks[1].detail or any("Platform CA" in x.detail for x in r.checks)
    # The expired go-tdx-guest copy of the TCB Signing certificate (same key) no longer serves.
    err = refused(v["x2_hex"], opts(X2_AT, x2_coll(v, "old_chain")))
    assert err.code == "attestation.certificate_expired"


def test_x3_debug_enclave_is_refused_by_the_default_policy(v: dict[str, bytes]) -> None:
    r = sgx.verify(v["x3"], opts(X1_AT, [v["x1_coll"]]))
    c = r.claims
    assert r.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert c["debug"] is True and c["attributes"].startswith("07") and c["xfrm"].startswith("ff02")
    assert c["mrenclave"].startswith("a39d532e") and c["mrenclave"].endswith("97e704b4")
    assert c["mrsigner"].startswith("9affcfae") and c["mrsigner"].endswith("43d78d1a")
    assert c["report_data"][:64].endswith("03") and c["report_data"][64:72] == "c0d8928b"
    assert c["report_data"].endswith("275e0fff")
    violations = appraisal_of(r, default_policy(), now=t(X1_AT)).violations
    assert [x["code"] for x in violations] == ["policy.debug_forbidden"]


@pytest.mark.parametrize(("name", "coll", "when"), [
    ("x1", "x1", "2025-07-20T00:00:00Z"), ("x1", "x1", "2025-06-19T10:00:00Z"),
    ("x2_hex", "x2", "2025-09-15T00:00:00Z"), ("x2_hex", "x2", "2025-08-15T05:00:00Z"),
])
def test_outside_the_window_is_refused(v: dict[str, bytes], name: str, coll: str,
                                       when: str) -> None:
    collateral = [v["x1_coll"]] if coll == "x1" else x2_coll(v)
    assert refused(v[name], opts(when, collateral)).code == "attestation.collateral_invalid"


@pytest.mark.parametrize(("offset", "step"), [
    (48 + 64, "4. quote signature"),  # MRENCLAVE
    (48 + 320, "4. quote signature"),  # REPORTDATA
    (8, "4. quote signature"),  # header: QE SVN
    (436 + 128 + 64, "2. QE report signature"),  # the QE report's MRENCLAVE
    (436 + 3, "4. quote signature"),  # the quote signature itself
])
def test_flipped_signed_byte_is_refused(v: dict[str, bytes], offset: int, step: str) -> None:
    err = refused(flip(v["x1"], offset), opts(X1_AT, [v["x1_coll"]]))
    assert err.code == "attestation.signature_invalid" and err.checks[-1].name == step


def test_flipped_collateral_byte_is_refused(v: dict[str, bytes]) -> None:
    bundle = json.loads(v["x1_coll"])
    bundle["tcb_info"] = bundle["tcb_info"].replace('"tcbEvaluationDataNumber":17',
                                                    '"tcbEvaluationDataNumber":18')
    err = refused(v["x1"], opts(X1_AT, [json.dumps(bundle).encode()]))
    assert err.code == "attestation.collateral_invalid"
    tcb = bytearray(v["x2_tcb"])
    tcb[tcb.index(b'"fmspc"') + 10] ^= 0x01
    err = refused(v["x2_hex"], opts(X2_AT, [bytes(tcb), *x2_coll(v)[1:]]))
    assert err.code == "attestation.collateral_invalid"


def test_tdx_collateral_does_not_appraise_an_sgx_quote(v: dict[str, bytes]) -> None:
    err = refused(v["x1"], opts(X1_AT, [v["tdx_coll"]]))
    assert err.code == "attestation.collateral_invalid"
    from medclave.attestation import tdx

    with pytest.raises(AttestationError) as info:
        tdx.verify(v["tdx_quote"], opts(X1_AT, [v["x1_coll"]]))
    assert info.value.code == "attestation.collateral_invalid"


def test_without_collateral_the_sgx_qe_is_pinned(v: dict[str, bytes]) -> None:
    r = sgx.verify(v["x1"], opts(X1_AT))
    assert r.tcb_status == "unknown" and r.checks[-1].name == "3b. QE identity (pinned)"
    assert not appraisal_of(r, parse_policy(b'platforms = ["sgx"]\n[tcb]\nrequire_known = true\n'),
                        now=t(X1_AT)).accepted


def test_sgx_reference_values(v: dict[str, bytes]) -> None:
    r = sgx.verify(v["x1"], opts(X1_AT, [v["x1_coll"]]))
    mr = r.claims["mrenclave"]
    policy = parse_policy(f'platforms = ["sgx"]\n[platform.sgx.reference_values]\n'
                          f'mrenclave = ["{mr}"]\n[platform.sgx.minimums]\nisvsvn = 0\n'.encode())
    assert appraisal_of(r, policy, now=t(X1_AT)).accepted
    other = parse_policy(b'platforms = ["sgx"]\n[platform.sgx.reference_values]\n'
                         b'mrenclave = ["' + b"00" * 32 + b'"]\n')
    assert not appraisal_of(r, other, now=t(X1_AT)).accepted


@pytest.fixture(scope="module")
def pki() -> ForgePki:
    return ForgePki()


def _forged_coll(v: dict[str, bytes], pki: ForgePki, status: str | None = None,
                 pcesvn: int | None = None, qe_status: str | None = None) -> list[bytes]:
    bundle = json.loads(v["x1_coll"])
    info: dict[str, Any] = json.loads(bundle["tcb_info"])
    qe: dict[str, Any] = json.loads(bundle["qe_identity"])
    for level in info["tcbLevels"]:
        if status is not None:
            level["tcbStatus"] = status
        if pcesvn is not None:
            level["tcb"]["pcesvn"] = pcesvn
    if qe_status is not None:
        for level in qe["tcbLevels"]:
            level["tcbStatus"] = qe_status
    return [pki.signer_pem(), pki.signed_response("tcbInfo", info),
            pki.signed_response("enclaveIdentity", qe)]


@pytest.mark.parametrize(("status", "qe_status", "expected"), [
    ("UpToDate", None, "UpToDate"),
    ("SWHardeningNeeded", None, "SWHardeningNeeded"),
    ("ConfigurationNeeded", None, "ConfigurationNeeded"),
    ("ConfigurationAndSWHardeningNeeded", None, "ConfigurationAndSWHardeningNeeded"),
    ("OutOfDate", None, "OutOfDate"),
    ("Revoked", None, "Revoked"),
    ("UpToDate", "OutOfDate", "OutOfDate"),
    ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
])
def test_tcb_level_statuses(v: dict[str, bytes], pki: ForgePki, status: str,
                            qe_status: str | None, expected: str) -> None:
    quote = pki.reissue_sgx(v["x1"])
    r = sgx.verify(quote, opts(X1_AT, _forged_coll(v, pki, status, qe_status=qe_status),
                               roots=pki.roots))
    assert r.tcb_status == expected and r.secure is False
    refused_by_default = expected in ("OutOfDate", "OutOfDateConfigurationNeeded", "Revoked")
    codes = {x["code"] for x in appraisal_of(r, default_policy(), now=t(X1_AT)).violations}
    assert ("policy.tcb_too_low" in codes) == refused_by_default


def test_no_matching_level(v: dict[str, bytes], pki: ForgePki) -> None:
    quote = pki.reissue_sgx(v["x1"])
    r = sgx.verify(quote, opts(X1_AT, _forged_coll(v, pki, pcesvn=99), roots=pki.roots))
    assert r.tcb_status == "NoMatch"


def test_bundle_binding_in_report_data(v: dict[str, bytes], pki: ForgePki) -> None:
    nonce, runtime = b"\x07" * 32, {"engine": "sgx-test"}
    body = bytearray(abi.parse_quote(v["x1"]).body.raw)
    body[320:384] = report_data_for(nonce, runtime)
    quote = pki.reissue_sgx(v["x1"], body=bytes(body))
    bundle = EvidenceBundle(platform="sgx", evidence=base64.b64encode(quote).decode(),
                            nonce=nonce.hex(), runtime=runtime)
    r = verify_bundle(bundle, now=t(X1_AT), expected_nonce=nonce, trusted_roots=pki.roots)
    assert r.claims["runtime"] == runtime and r.checks[-1].name == "binding"
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle.model_copy(update={"runtime": {"engine": "x"}}), now=t(X1_AT),
                      expected_nonce=nonce, trusted_roots=pki.roots)
    assert info.value.code == "attestation.binding_mismatch"


def test_truncated_and_foreign_input(v: dict[str, bytes]) -> None:
    assert sgx.detect(v["tdx_quote"]) is None and sgx.detect(b"abcd") is None
    for cut in (10, 500, 1000, len(v["x1"]) - 1):
        with pytest.raises(AttestationError):
            sgx.verify(v["x1"][:cut], opts(X1_AT))


def test_v4_layout(v: dict[str, bytes], pki: ForgePki) -> None:
    """No real SGX v4 quote is public (MANIFEST): the X1 enclave report in the v4 layout."""
    quote = pki.reissue_sgx(v["x1"], version=4)
    assert abi.parse_quote(quote).header.version == 4 and registry.detect(quote) == "sgx"
    r = sgx.verify(quote, opts(X1_AT, _forged_coll(v, pki, "UpToDate"), roots=pki.roots))
    assert r.claims["version"] == 4 and r.tcb_status == "UpToDate"
    assert r.claims["mrenclave"] == sgx.verify(v["x1"], opts(X1_AT)).claims["mrenclave"]
    err = refused(flip(quote, 48 + 64), opts(X1_AT, roots=pki.roots))
    assert err.code == "attestation.signature_invalid"


def test_nonce_is_report_data(v: dict[str, bytes]) -> None:
    from medclave.attestation.verifier import verify_raw

    r = verify_raw(v["x1"], now=t(X1_AT), nonce=b"Hello, world!")
    assert r.checks[-1].name == "nonce" and r.checks[-1].ok
    with pytest.raises(AttestationError) as info:
        verify_raw(v["x1"], now=t(X1_AT), nonce=b"Hello, World!")
    assert info.value.code == "attestation.nonce_mismatch"
