"""Intel TDX quotes T1, T2, T4, T7 of the vectors MANIFEST, and the twin of each refused."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from medclave.attestation import registry, tdx
from medclave.attestation.core import Endorsements, Verification, VerifyOptions
from medclave.attestation.dcap import collateral, pck, pcs
from medclave.attestation.tdx import abi
from medclave.attestation.tdx.rules import TdxRules, appraise
from medclave.attestation.x509chain import fingerprint
from medclave.errors import AttestationError, InputError, MedclaveError
from tests.attestation._ecdsa import P256_N, raw_high_s
from tests.attestation._tdx_forge import ForgePki
from tests.conftest import at, flip

T1 = "go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
T2 = "go-tdx-guest/quote_v5_sample.dat"
T4 = "trustee/tdx_quote_4.dat"
T7 = "dcap-qvl/tdx_quote"
T1_TIME, T2_TIME, T4_TIME, T7_TIME = "2023-07-01", "2026-02-03", "2023-07-01", "2025-07-01"


@pytest.fixture(scope="module")
def tdx_dir(vectors: Path) -> Path:
    return vectors / "tdx"


def read(tdx_dir: Path, name: str) -> bytes:
    return (tdx_dir / name).read_bytes()


def options(now: str | datetime, collateral: Sequence[bytes] = (),
            certificates: Sequence[x509.Certificate] = (),
            roots: frozenset[str] | None = None) -> VerifyOptions:
    return VerifyOptions(
        now=at(now) if isinstance(now, str) else now,
        endorsements=Endorsements(collateral=tuple(collateral), certificates=tuple(certificates)),
        trusted_roots=roots,
    )


def gtg_collateral(tdx_dir: Path) -> list[bytes]:
    """go-tdx-guest's PCS responses (2023-06/07), its CRLs and the TCB signing chain."""
    g = "go-tdx-guest/"
    return [read(tdx_dir, g + n) for n in ("sample_tcbInfo_response", "sample_qeIdentity_response",
                                           "pckcrl", "rootcrl.der", "tcbinfo_issuer_chain.pem")]


def bundle(tdx_dir: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(read(tdx_dir, "dcap-qvl/tdx_quote_collateral.json"))
    return value


def tcb_signer_2025(tdx_dir: Path) -> list[x509.Certificate]:
    """The renewed Intel SGX TCB Signing certificate (2025-05..2032), from the dcap-qvl bundle."""
    return x509.load_pem_x509_certificates(bundle(tdx_dir)["tcb_info_issuer_chain"].encode())


def refused(data: bytes, opts: VerifyOptions) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        tdx.verify(data, opts)
    return info.value


def offsets(data: bytes) -> dict[str, int]:
    """Offsets of one byte in each signed or bound region of ``data``."""
    q = abi.parse_quote(data)
    body_start = abi.HEADER_SIZE + (abi.BODY_DESCRIPTOR_SIZE if q.header.version == 5 else 0)
    sig = len(q.signed) + 4
    qe = sig + 64 + 64 + 6
    return {
        "header (qe_vendor_id)": 12,
        "body (mr_td)": body_start + 136,
        "body (report_data)": body_start + 520,
        "quote signature": sig + 10,
        "attestation key": sig + 64 + 5,
        "QE report (isvsvn)": qe + 258,
        "QE report signature": qe + 384 + 3,
        "QE auth data": qe + 384 + 64 + 2 + 1,
    }


FLIP_CODES = {
    "header (qe_vendor_id)": "attestation.signature_invalid",
    "body (mr_td)": "attestation.signature_invalid",
    "body (report_data)": "attestation.signature_invalid",
    "quote signature": "attestation.signature_invalid",
    "attestation key": "attestation.signature_invalid",
    "QE report (isvsvn)": "attestation.signature_invalid",
    "QE report signature": "attestation.signature_invalid",
    "QE auth data": "attestation.signature_invalid",
}


def step_of(exc: AttestationError) -> str:
    assert exc.checks and not exc.checks[-1].ok
    return exc.checks[-1].name


# --- detection and parsing -----------------------------------------------------------------


@pytest.mark.vectors
@pytest.mark.parametrize("name", [T1, T2, T4, T7])
def test_detect(tdx_dir: Path, name: str) -> None:
    assert tdx.detect(read(tdx_dir, name)) == "tdx"


def test_detect_rejects_other_formats() -> None:
    assert tdx.detect(b"") is None
    assert tdx.detect(bytes(2000)) is None
    snp_like = struct.pack("<I", 2) + bytes(1180)
    assert tdx.detect(snp_like) is None
    sgx_v3 = struct.pack("<HHI", 3, 2, 0) + bytes(1000)
    assert tdx.detect(sgx_v3) is None


@pytest.mark.vectors
def test_t1_claims_and_trailing_garbage(tdx_dir: Path) -> None:
    data = read(tdx_dir, T1)
    assert data.endswith(b"\nextra bytes(only for testing purpose)\n")
    claims = tdx.parse(data)
    assert claims["version"] == 4 and claims["body_type"] == 2
    assert claims["mr_td"].startswith("6363b804") and claims["mr_td"].endswith("d7215cbb")
    assert claims["mr_seam"].startswith("2fd279c1") and claims["mr_seam"].endswith("5363c656")
    assert claims["td_attributes"] == "0000004000000000"
    assert claims["xfam"] == "e71a060000000000"
    assert claims["tee_tcb_svn"] == "03000400000000000000000000000000"
    assert claims["qe_vendor_id"] == "939a7233f79c4ca9940a0db3957f0607"
    assert claims["report_data"].startswith("6c62dec1")
    assert claims["report_data"].endswith("281f1113")
    assert claims["fmspc"] == "50806f000000"
    assert claims["debug"] is False
    assert claims["pce_svn"] == 11 and claims["qe_isvsvn"] == 4
    for name in ("mr_signer_seam", "mr_config_id", "mr_owner", "mr_owner_config", "rtmr3"):
        assert claims[name] == "00" * 48
    assert {f"rtmr{i}" for i in range(4)} <= set(claims)
    assert abi.parse_quote(data).trailing == 39


@pytest.mark.vectors
def test_t2_v5_claims(tdx_dir: Path) -> None:
    claims = tdx.parse(read(tdx_dir, T2))
    assert claims["version"] == 5 and claims["body_type"] == 3
    assert claims["mr_td"].startswith("7348651a") and claims["mr_td"].endswith("3bc8f876")
    assert claims["report_data"].startswith("945eaacf")
    assert claims["report_data"].endswith("31c25c3a")
    assert claims["fmspc"] == "90c06f000000"
    assert claims["tee_tcb_svn"][:4] == "0b01"  # module TDX_01, isvsvn 11
    assert len(bytes.fromhex(claims["tee_tcb_svn2"])) == 16
    assert len(bytes.fromhex(claims["mr_servicetd"])) == 48
    assert claims["qe_isvsvn"] == 7


@pytest.mark.vectors
def test_t4_claims(tdx_dir: Path) -> None:
    claims = tdx.parse(read(tdx_dir, T4))
    assert claims["mr_td"].startswith("705ee938") and claims["mr_td"].endswith("9ce5f031")
    assert claims["report_data"].startswith("7c71fe2c")
    assert claims["report_data"].endswith("71501429")
    assert claims["fmspc"] == "50806f000000"
    assert claims["debug"] is True  # TDATTRIBUTES 0x01: a debug TD, for policies to refuse


@pytest.mark.vectors
def test_pck_extension_t1(tdx_dir: Path) -> None:
    q = abi.parse_quote(read(tdx_dir, T1))
    leaf = x509.load_pem_x509_certificates(q.pck_chain_pem)[0]
    ext = pck.pck_tcb(leaf)
    assert ext.sgx_tcb_components == (3, 3, 2, 2, 2, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.pce_svn == 11 and ext.fmspc.hex() == "50806f000000" and ext.pce_id == b"\0\0"
    assert len(ext.ppid) == 16 and len(ext.cpu_svn) == 16


# --- the four quotes verified -----------------------------------------------------------------


@pytest.mark.vectors
def test_t1_without_collateral(tdx_dir: Path) -> None:
    v = tdx.verify(read(tdx_dir, T1), options(T1_TIME))
    assert v.platform == "tdx" and v.tcb_status == "unknown" and v.secure
    names = [c.name for c in v.checks]
    for step in ("1. PCK certificate chain", "2. QE report signature",
                 "3. attestation key binding", "4. quote signature"):
        assert step in names
    assert all(c.ok for c in v.checks)
    assert v.claims["revocation_checked"] is False
    assert v.claims["mr_td"] == tdx.parse(read(tdx_dir, T1))["mr_td"]


@pytest.mark.vectors
def test_t1_evidence_digest_is_over_the_signed_bytes(tdx_dir: Path) -> None:
    """The quote's ECDSA-P256 signature with s -> n - s verifies too, and the trailing bytes are
    unsigned: both byte forms are one quote, with one evidence digest (issue 9, part 6)."""
    data = read(tdx_dir, T1)
    signed = data[:48 + 584]  # v4 header (48) and TD 1.0 report body (584), Intel DCAP A.3
    sig_at = len(signed) + 4  # after the 4-byte signature data length
    twin = data[:sig_at] + raw_high_s(data[sig_at:sig_at + 64], P256_N) + data[sig_at + 64:]
    stripped = data[:len(data) - abi.parse_quote(data).trailing]
    expected = hashlib.sha256(signed).hexdigest()
    for form in (data, twin, stripped):
        v = tdx.verify(form, options(T1_TIME))
        assert v.evidence_digest == expected
        assert registry.evidence_digest("tdx", form) == expected
    assert len({hashlib.sha256(f).hexdigest() for f in (data, twin, stripped)}) == 3


@pytest.mark.vectors
def test_t1_with_collateral_has_no_matching_level(tdx_dir: Path) -> None:
    v = tdx.verify(read(tdx_dir, T1), options(T1_TIME, gtg_collateral(tdx_dir)))
    assert v.tcb_status == "NoMatch"  # PCK SGX SVNs 3,3,2,2,2,... are below every level
    details = {c.name: c.detail for c in v.checks}
    assert "UpToDate" in details["5d. QE identity"]
    assert v.claims["revocation_checked"] is True
    violations = appraise(v.claims, TdxRules(), tcb_status=v.tcb_status)
    assert [x.claim for x in violations] == ["tcb_status"]


@pytest.mark.vectors
def test_t2_v5_up_to_date_module_tdx01(tdx_dir: Path) -> None:
    coll = [read(tdx_dir, "go-tdx-guest/sample_tcbinfo_response_v5")]
    v = tdx.verify(read(tdx_dir, T2), options(T2_TIME, coll, tcb_signer_2025(tdx_dir)))
    assert v.tcb_status == "UpToDate"
    level = {c.name: c.detail for c in v.checks}["5c. TCB level"]
    assert "2024-11-13" in level and "TDX_01 UpToDate" in level
    assert v.claims["mr_td"].startswith("7348651a")


@pytest.mark.vectors
def test_t2_expired_qe_identity_is_refused(tdx_dir: Path) -> None:
    """go-tdx-guest pairs T2 with a 2023 QE identity; at T2's time it is long expired."""
    coll = [read(tdx_dir, "go-tdx-guest/sample_tcbinfo_response_v5"),
            read(tdx_dir, "go-tdx-guest/sample_qeIdentity_response")]
    exc = refused(read(tdx_dir, T2), options(T2_TIME, coll, tcb_signer_2025(tdx_dir)))
    assert exc.code == "attestation.collateral_invalid"
    assert step_of(exc) == "5b. QE identity"


@pytest.mark.vectors
def test_t4_up_to_date(tdx_dir: Path) -> None:
    v = tdx.verify(read(tdx_dir, T4), options(T4_TIME, gtg_collateral(tdx_dir)))
    assert v.tcb_status == "UpToDate"
    assert v.claims["mr_td"].startswith("705ee938")
    violations = appraise(v.claims, TdxRules(), tcb_status=v.tcb_status)
    assert [x.code for x in violations] == ["policy.debug_forbidden"]


@pytest.mark.vectors
def test_t7_everything_valid(tdx_dir: Path) -> None:
    coll = [read(tdx_dir, "dcap-qvl/tdx_quote_collateral.json")]
    v = registry.get("tdx").verify(read(tdx_dir, T7), options(T7_TIME, coll))
    assert isinstance(v, Verification)
    assert v.tcb_status == "UpToDate" and v.claims["advisory_ids"] == []
    assert v.claims["revocation_checked"] is True
    names = [c.name for c in v.checks]
    crl_checks = [n for n in names if n.startswith("CRL ")]
    assert any("PCK Platform CA" in n for n in crl_checks)
    assert any("Root CA" in n for n in crl_checks)
    assert {"5a. tcbInfo", "5b. QE identity", "5c. TCB level", "5d. QE identity"} <= set(names)
    assert all(c.ok for c in v.checks)
    strict = TdxRules(require_revocation_check=True)
    assert appraise(v.claims, strict, tcb_status=v.tcb_status) == []
    assert v.to_dict()["verified"] is True


@pytest.mark.vectors
@pytest.mark.parametrize("when", ["2025-06-18", "2025-07-20"])
def test_t7_outside_collateral_validity(tdx_dir: Path, when: str) -> None:
    coll = [read(tdx_dir, "dcap-qvl/tdx_quote_collateral.json")]
    exc = refused(read(tdx_dir, T7), options(when, coll))
    assert exc.code == "attestation.collateral_invalid"


@pytest.mark.vectors
def test_t1_tcb_info_expired(tdx_dir: Path) -> None:
    coll = [read(tdx_dir, "go-tdx-guest/sample_tcbInfo_response"),
            read(tdx_dir, "go-tdx-guest/tcbinfo_issuer_chain.pem")]
    exc = refused(read(tdx_dir, T1), options("2023-07-19", coll))
    assert exc.code == "attestation.collateral_invalid" and step_of(exc) == "5a. tcbInfo"
    exc = refused(read(tdx_dir, T1), options("2023-06-17", coll))
    assert exc.code == "attestation.collateral_invalid"


# --- one signed byte flipped --------------------------------------------------------------------


def _twin_cases() -> list[tuple[str, str, str]]:
    return [(q, when, region) for q, when in ((T1, T1_TIME), (T2, T2_TIME), (T4, T4_TIME),
                                              (T7, T7_TIME)) for region in FLIP_CODES]


@pytest.mark.vectors
@pytest.mark.parametrize(("name", "when", "region"), _twin_cases())
def test_flipped_byte_refused(tdx_dir: Path, name: str, when: str, region: str) -> None:
    data = read(tdx_dir, name)
    tdx.verify(data, options(when))  # the original verifies
    exc = refused(flip(data, offsets(data)[region]), options(when))
    assert exc.code == FLIP_CODES[region]


@pytest.mark.vectors
def test_flipped_qe_report_names_the_step(tdx_dir: Path) -> None:
    data = read(tdx_dir, T7)
    assert step_of(refused(flip(data, offsets(data)["QE report (isvsvn)"]), options(T7_TIME))) \
        == "2. QE report signature"
    assert step_of(refused(flip(data, offsets(data)["attestation key"]), options(T7_TIME))) \
        == "3. attestation key binding"
    assert step_of(refused(flip(data, offsets(data)["body (mr_td)"]), options(T7_TIME))) \
        == "4. quote signature"


@pytest.mark.vectors
def test_trailing_bytes_are_not_signed_and_ignored(tdx_dir: Path) -> None:
    data = read(tdx_dir, T1)
    v = tdx.verify(flip(data, len(data) - 5), options(T1_TIME))
    assert v.claims == tdx.verify(data, options(T1_TIME)).claims


@pytest.mark.vectors
@pytest.mark.parametrize("key", ["tcb_info_signature", "qe_identity_signature"])
def test_t7_flipped_collateral_signature(tdx_dir: Path, key: str) -> None:
    b = bundle(tdx_dir)
    sig = bytearray(bytes.fromhex(b[key]))
    sig[7] ^= 0x01
    b[key] = sig.hex()
    exc = refused(read(tdx_dir, T7), options(T7_TIME, [json.dumps(b).encode()]))
    assert exc.code == "attestation.collateral_invalid"


@pytest.mark.vectors
@pytest.mark.parametrize("key", ["tcb_info", "qe_identity"])
def test_t7_altered_signed_collateral(tdx_dir: Path, key: str) -> None:
    b = bundle(tdx_dir)
    b[key] = b[key].replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18')
    exc = refused(read(tdx_dir, T7), options(T7_TIME, [json.dumps(b).encode()]))
    assert exc.code == "attestation.collateral_invalid"


@pytest.mark.vectors
def test_t1_flipped_pcs_response_signature(tdx_dir: Path) -> None:
    coll = gtg_collateral(tdx_dir)
    raw = coll[0]
    pos = raw.rindex(b'"signature":"') + len(b'"signature":"') + 4
    coll[0] = raw[:pos] + (b"0" if raw[pos:pos + 1] != b"0" else b"1") + raw[pos + 1:]
    exc = refused(read(tdx_dir, T1), options(T1_TIME, coll))
    assert exc.code == "attestation.collateral_invalid" and step_of(exc) == "5a. tcbInfo"


@pytest.mark.vectors
def test_t1_flipped_crl_signature(tdx_dir: Path) -> None:
    coll = gtg_collateral(tdx_dir)
    coll[2] = flip(coll[2], len(coll[2]) - 3)
    exc = refused(read(tdx_dir, T1), options(T1_TIME, coll))
    assert exc.code == "attestation.collateral_invalid"


# --- chains, roots, time ------------------------------------------------------------------------


@pytest.mark.vectors
def test_unpinned_root_refused(tdx_dir: Path) -> None:
    exc = refused(read(tdx_dir, T7), options(T7_TIME, roots=frozenset({"00" * 32})))
    assert exc.code == "attestation.root_untrusted"


def test_pinned_root_matches_the_intel_root(vectors: Path) -> None:
    root = x509.load_pem_x509_certificate(
        (vectors / "tdx/intel-roots/go-tdx-guest_trusted_root.pem").read_bytes())
    assert fingerprint(root) == tdx.INTEL_SGX_ROOT_CA_SHA256
    assert tdx.INTEL_SGX_ROOT_CA_SHA256.startswith("44a0196b2b99f889")


@pytest.mark.vectors
def test_pck_expired(tdx_dir: Path) -> None:
    exc = refused(read(tdx_dir, T1), options("2030-01-01"))
    assert exc.code == "attestation.certificate_expired"


@pytest.mark.vectors
def test_naive_time_refused(tdx_dir: Path) -> None:
    with pytest.raises(InputError):
        tdx.verify(read(tdx_dir, T7), VerifyOptions(now=datetime(2025, 7, 1)))


@pytest.mark.vectors
def test_collateral_for_another_platform(tdx_dir: Path) -> None:
    """T4 (FMSPC 50806f000000) against T7's collateral (B0C06F000000)."""
    coll = [read(tdx_dir, "dcap-qvl/tdx_quote_collateral.json")]
    exc = refused(read(tdx_dir, T4), options(T7_TIME, coll))
    assert exc.code == "attestation.collateral_invalid" and "FMSPC" in exc.detail


@pytest.mark.vectors
def test_tcb_signing_chain_missing(tdx_dir: Path) -> None:
    coll = [read(tdx_dir, "go-tdx-guest/sample_tcbInfo_response")]
    exc = refused(read(tdx_dir, T1), options(T1_TIME, coll))
    assert exc.code == "attestation.certificate_missing"


@pytest.mark.vectors
def test_two_tcb_infos_refused(tdx_dir: Path) -> None:
    coll = [*gtg_collateral(tdx_dir), read(tdx_dir, "go-tdx-guest/sample_tcbinfo_response_v5")]
    assert refused(read(tdx_dir, T1), options(T1_TIME, coll)).code \
        == "attestation.collateral_invalid"


@pytest.mark.vectors
def test_unrelated_collateral_is_ignored_and_counted(tdx_dir: Path) -> None:
    coll = [b'{"something": "else"}', b"<xml/>",
            read(tdx_dir, "dcap-qvl/tdx_quote_collateral.json")]
    v = tdx.verify(read(tdx_dir, T7), options(T7_TIME, coll))
    assert v.tcb_status == "UpToDate"
    assert "2 item(s) ignored" in {c.name: c.detail for c in v.checks}["5. collateral"]


@pytest.mark.vectors
def test_pem_crls_accepted(tdx_dir: Path) -> None:
    b = bundle(tdx_dir)
    crls = [x509.load_der_x509_crl(bytes.fromhex(b[k])) for k in ("pck_crl", "root_ca_crl")]
    from cryptography.hazmat.primitives.serialization import Encoding
    coll = [c.public_bytes(Encoding.PEM) for c in crls]
    v = tdx.verify(read(tdx_dir, T7), options(T7_TIME, coll))
    assert v.claims["revocation_checked"] is True and v.tcb_status == "unknown"


# --- re-issued under a test PKI: revocation and every TCB outcome ---------------------------------


@pytest.fixture(scope="module")
def pki() -> ForgePki:
    return ForgePki()


def _docs(tdx_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    b = bundle(tdx_dir)
    return json.loads(b["tcb_info"]), json.loads(b["qe_identity"])


def _forged(tdx_dir: Path, pki: ForgePki, tcb_info: dict[str, Any] | None = None,
            qe_identity: dict[str, Any] | None = None, crl: bytes | None = None,
            qe_report: bytes | None = None) -> tuple[bytes, VerifyOptions, x509.Certificate]:
    quote, leaf = pki.reissue(read(tdx_dir, T7), qe_report=qe_report)
    coll = [pki.signer_pem()]
    if tcb_info is not None:
        coll.append(pki.signed_response("tcbInfo", tcb_info))
    if qe_identity is not None:
        coll.append(pki.signed_response("enclaveIdentity", qe_identity))
    if crl is not None:
        coll.append(crl)
    return quote, options(T7_TIME, coll, roots=pki.roots), leaf


@pytest.mark.vectors
def test_forged_chain_verifies_only_under_its_root(tdx_dir: Path, pki: ForgePki) -> None:
    tcb_info, qe_identity = _docs(tdx_dir)
    quote, opts, _ = _forged(tdx_dir, pki, tcb_info, qe_identity, pki.crl([12345]))
    assert tdx.verify(quote, opts).tcb_status == "UpToDate"
    assert refused(quote, options(T7_TIME)).code == "attestation.root_untrusted"


@pytest.mark.vectors
def test_revoked_pck_refused(tdx_dir: Path, pki: ForgePki) -> None:
    quote, leaf = pki.reissue(read(tdx_dir, T7))
    crl = pki.crl([leaf.serial_number])
    exc = refused(quote, options(T7_TIME, [crl], roots=pki.roots))
    assert exc.code == "attestation.certificate_revoked"


@pytest.mark.vectors
def test_stale_pck_crl_refused(tdx_dir: Path, pki: ForgePki) -> None:
    quote, _ = pki.reissue(read(tdx_dir, T7))
    crl = pki.crl([], next_update=at("2025-06-30"))
    assert refused(quote, options(T7_TIME, [crl], roots=pki.roots)).code \
        == "attestation.collateral_invalid"


def _set_level_status(tcb_info: dict[str, Any], status: str) -> None:
    tcb_info["tcbLevels"][0]["tcbStatus"] = status


@pytest.mark.vectors
@pytest.mark.parametrize(("level", "module", "qe", "expected"), [
    ("UpToDate", "UpToDate", "UpToDate", "UpToDate"),
    ("SWHardeningNeeded", "UpToDate", "UpToDate", "SWHardeningNeeded"),
    ("ConfigurationNeeded", "OutOfDate", "UpToDate", "OutOfDateConfigurationNeeded"),
    ("UpToDate", "OutOfDate", "UpToDate", "OutOfDate"),
    ("UpToDate", "Revoked", "UpToDate", "Revoked"),
    ("SWHardeningNeeded", "UpToDate", "OutOfDate", "OutOfDate"),
    ("UpToDate", "UpToDate", "Revoked", "Revoked"),
    ("OutOfDate", "UpToDate", "UpToDate", "OutOfDate"),
])
def test_tcb_statuses_converge(tdx_dir: Path, pki: ForgePki, level: str, module: str, qe: str,
                               expected: str) -> None:
    tcb_info, qe_identity = _docs(tdx_dir)
    _set_level_status(tcb_info, level)
    tdx01 = next(m for m in tcb_info["tdxModuleIdentities"] if m["id"] == "TDX_01")
    tdx01["tcbLevels"][0]["tcbStatus"] = module
    qe_identity["tcbLevels"][0]["tcbStatus"] = qe
    quote, opts, _ = _forged(tdx_dir, pki, tcb_info, qe_identity)
    assert tdx.verify(quote, opts).tcb_status == expected


@pytest.mark.vectors
def test_tdx_components_too_low_is_no_match(tdx_dir: Path, pki: ForgePki) -> None:
    tcb_info, _ = _docs(tdx_dir)
    for level in tcb_info["tcbLevels"]:  # T7's tee_tcb_svn[2] is 3
        level["tcb"]["tdxtcbcomponents"][2]["svn"] = 9
    quote, opts, _ = _forged(tdx_dir, pki, tcb_info)
    assert tdx.verify(quote, opts).tcb_status == "NoMatch"


@pytest.mark.vectors
def test_missing_module_identity_is_no_match(tdx_dir: Path, pki: ForgePki) -> None:
    tcb_info, _ = _docs(tdx_dir)
    tcb_info["tdxModuleIdentities"] = [m for m in tcb_info["tdxModuleIdentities"]
                                       if m["id"] != "TDX_01"]
    quote, opts, _ = _forged(tdx_dir, pki, tcb_info)
    v = tdx.verify(quote, opts)
    assert v.tcb_status == "NoMatch"
    assert "TDX_01" in {c.name: c.detail for c in v.checks}["5c. TCB level"]


@pytest.mark.vectors
def test_module_isvsvn_below_every_level_is_no_match(tdx_dir: Path, pki: ForgePki) -> None:
    tcb_info, _ = _docs(tdx_dir)
    for module in tcb_info["tdxModuleIdentities"]:
        for level in module["tcbLevels"]:
            level["tcb"]["isvsvn"] = 200
    quote, opts, _ = _forged(tdx_dir, pki, tcb_info)
    assert tdx.verify(quote, opts).tcb_status == "NoMatch"


@pytest.mark.vectors
def test_module_signer_mismatch_refused(tdx_dir: Path, pki: ForgePki) -> None:
    tcb_info, _ = _docs(tdx_dir)
    for module in tcb_info["tdxModuleIdentities"]:
        module["mrsigner"] = "11" * 48
    quote, opts, _ = _forged(tdx_dir, pki, tcb_info)
    assert refused(quote, opts).code == "attestation.measurement_mismatch"


@pytest.mark.vectors
@pytest.mark.parametrize(("field", "value"), [
    ("mrsigner", "00" * 32), ("isvprodid", 3), ("miscselect", "00000001"),
    ("attributes", "01000000000000000000000000000000"),
])
def test_qe_identity_mismatch(tdx_dir: Path, pki: ForgePki, field: str, value: Any) -> None:
    _, qe_identity = _docs(tdx_dir)
    qe_identity[field] = value
    quote, opts, _ = _forged(tdx_dir, pki, qe_identity=qe_identity)
    exc = refused(quote, opts)
    assert exc.code == "attestation.qe_identity_mismatch" and step_of(exc) == "5d. QE identity"


@pytest.mark.vectors
def test_qe_isvsvn_below_every_level(tdx_dir: Path, pki: ForgePki) -> None:
    tcb_info, qe_identity = _docs(tdx_dir)
    qe_identity["tcbLevels"] = [{"tcb": {"isvsvn": 99}, "tcbDate": "2025-01-01T00:00:00Z",
                                 "tcbStatus": "UpToDate"}]
    quote, opts, _ = _forged(tdx_dir, pki, tcb_info, qe_identity)
    assert tdx.verify(quote, opts).tcb_status == "NoMatch"


@pytest.mark.vectors
@pytest.mark.parametrize("mutate", [
    lambda d: d.update(id="SGX"),
    lambda d: d.update(version=2),
    lambda d: d.update(fmspc="zz"),
    lambda d: d.update(tcbLevels=[]),
    lambda d: d["tcbLevels"][0].update(tcbStatus="Fine"),
    lambda d: d["tcbLevels"][0]["tcb"].update(pcesvn=True),
    lambda d: d["tcbLevels"][0]["tcb"]["sgxtcbcomponents"].pop(),
    lambda d: d.update(issueDate="yesterday"),
])
def test_malformed_signed_tcb_info(tdx_dir: Path, pki: ForgePki, mutate: Any) -> None:
    tcb_info, _ = _docs(tdx_dir)
    mutate(tcb_info)
    quote, opts, _ = _forged(tdx_dir, pki, tcb_info)
    assert refused(quote, opts).code == "attestation.collateral_invalid"


# --- collateral parsing ---------------------------------------------------------------------


def test_member_bytes_are_cut_exactly() -> None:
    raw = b' { "a" : [1, 2] ,"tcbInfo":{"x": "y\\"}"} , "signature":"ab"}\n'
    members = pcs.top_level_members(raw)
    assert members["tcbInfo"][1] == b'{"x": "y\\"}"}'
    assert members["a"][1] == b"[1, 2]"
    for bad in (b'{"a":1,"a":2}', b'{"a":1} x', b"[1]", b'{"a":', b"\xff", b"{" * 5000):
        with pytest.raises(AttestationError):
            pcs.top_level_members(bad)


@pytest.mark.vectors
def test_collateral_bundle_parts(tdx_dir: Path) -> None:
    found = collateral.gather([read(tdx_dir, "dcap-qvl/tdx_quote_collateral.json")])
    assert found.tcb_info is not None and found.qe_identity is not None
    assert found.tcb_info.content.fmspc.hex() == "b0c06f000000"
    assert [m.id for m in found.tcb_info.content.module_identities] == ["TDX_03", "TDX_01"]
    assert len(found.crls) == 2 and found.ignored == 0


# --- appraise ------------------------------------------------------------------------------------


@pytest.mark.vectors
def test_validate_rules(tdx_dir: Path) -> None:
    v = tdx.verify(read(tdx_dir, T7), options(T7_TIME, [read(tdx_dir,
                                                             "dcap-qvl/tdx_quote_collateral.json")]))
    claims = v.claims
    ok = TdxRules(
        measurements={"mr_td": frozenset({claims["mr_td"].upper()}),
                      "rtmr0": frozenset({claims["rtmr0"]})},
        report_data=claims["report_data"],
        min_tee_tcb_svn=claims["tee_tcb_svn"], min_qe_isvsvn=6, min_pce_svn=11,
        td_attributes=frozenset({claims["td_attributes"]}), xfam=frozenset({claims["xfam"]}),
    )
    assert appraise(claims, ok, tcb_status=v.tcb_status) == []
    bad = TdxRules(
        measurements={"mr_td": frozenset({"00" * 48}), "mr_bogus": frozenset({"00"})},
        report_data="00" * 64, min_tee_tcb_svn="07" + "00" * 15, min_qe_isvsvn=7,
        min_pce_svn=12, qe_vendor_ids=frozenset({"00" * 16}), xfam=frozenset({"00" * 8}),
    )
    got = {(x.code, x.claim) for x in appraise(claims, bad, tcb_status="OutOfDate")}
    assert got == {
        ("attestation.measurement_mismatch", "mr_td"), ("policy.refused", "mr_bogus"),
        ("attestation.binding_mismatch", "report_data"), ("policy.tcb_too_low", "tee_tcb_svn"),
        ("policy.tcb_too_low", "qe_isvsvn"), ("policy.tcb_too_low", "pce_svn"),
        ("policy.refused", "qe_vendor_id"), ("policy.refused", "xfam"),
        ("policy.tcb_too_low", "tcb_status"),
    }
    missing = appraise({}, TdxRules(min_qe_isvsvn=1, require_revocation_check=True))
    assert {x.claim for x in missing} == {"debug", "qe_isvsvn", "qe_vendor_id", "tcb_status",
                                          "revocation_checked"}
    assert appraise(claims, TdxRules(allow_unknown_tcb=True), tcb_status="unknown") == []


@pytest.mark.vectors
def test_parse_errors_are_medclave_errors(tdx_dir: Path) -> None:
    data = read(tdx_dir, T7)
    for bad in (data[:100], data[:700], b"\x06" + data[1:], data[:2] + b"\x03" + data[3:]):
        with pytest.raises(MedclaveError):
            tdx.parse(bad)
    with pytest.raises(AttestationError) as info:
        tdx.verify(data[:1000], options(T7_TIME))
    assert info.value.code == "attestation.malformed" and step_of(info.value) == "0. parse quote"
