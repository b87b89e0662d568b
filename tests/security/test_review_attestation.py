"""Security review of the attestation layer: each test pins one weakness found and fixed.

Every test here failed before its fix: a chain accepted through a non-CA issuer, a PCS document
signed by a platform's PCK key, evidence under a caller-supplied root reported as ``secure``, an
appraisal that accepted non-genuine hardware or ignored its own freshness and GPU rules, and
platform rule tables whose mistyped booleans silently turned a check off.
"""

from __future__ import annotations

import base64
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from medclave.attestation import nvidia, tdx
from medclave.attestation.core import CheckLog, Endorsements, Verification, VerifyOptions
from medclave.attestation.dcap.pck import SGX_EXTENSION_OID
from medclave.attestation.nvidia import abi as nv_abi
from medclave.attestation.nvidia.verify import OID_TCG_DICE_TCBINFO
from medclave.attestation.policy import appraisal_of, appraise, default_policy, parse_policy
from medclave.attestation.tdx import abi as tdx_abi
from medclave.attestation.x509chain import fingerprint, verify_chain
from medclave.errors import AttestationError, PolicyError
from tests.attestation._nvidia_helpers import RIM_VALID_AT
from tests.attestation._nvidia_helpers import load as load_nvidia
from tests.attestation._tdx_forge import ForgePki, raw_signature
from tests.conftest import at

NOW = datetime(2026, 1, 1, tzinfo=UTC)
_FROM = datetime(2020, 1, 1, tzinfo=UTC)
_TO = datetime(2040, 1, 1, tzinfo=UTC)
T7 = "dcap-qvl/tdx_quote"
T7_TIME = at("2025-07-01")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn: str | x509.Name, key: ec.EllipticCurvePrivateKey, issuer: str | x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool | None,
          path_length: int | None = None, key_cert_sign: bool | None = None,
          extensions: tuple[x509.ExtensionType, ...] = (),
          hash_alg: hashes.SHA256 | hashes.SHA384 | None = None) -> x509.Certificate:
    subject = _name(cn) if isinstance(cn, str) else cn
    issuer_name = _name(issuer) if isinstance(issuer, str) else issuer
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_FROM).not_valid_after(_TO))
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    if key_cert_sign is not None:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
            crl_sign=key_cert_sign, encipher_only=False, decipher_only=False), critical=True)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hash_alg or hashes.SHA256())


def _key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


# --- x509chain: every issuer must be a CA ----------------------------------------------------


def _chain_through_leaf(**leaf_kw: Any) -> tuple[list[x509.Certificate], frozenset[str]]:
    """root -> CA -> leaf, and a certificate the leaf's key holder minted under the leaf."""
    root_k, ca_k, leaf_k, minted_k = _key(), _key(), _key(), _key()
    root = _cert("Root", root_k, "Root", root_k, ca=True)
    ca = _cert("CA", ca_k, "Root", root_k, ca=True)
    leaf = _cert("Leaf", leaf_k, "CA", ca_k, **{"ca": False, **leaf_kw})
    minted = _cert("Minted", minted_k, "Leaf", leaf_k, ca=False)
    return [minted, leaf, ca, root], frozenset({fingerprint(root)})


@pytest.mark.parametrize("leaf_kw", [{"ca": False}, {"ca": None}, {"ca": None,
                                                                   "key_cert_sign": False}])
def test_a_leaf_cannot_issue_certificates(leaf_kw: dict[str, Any]) -> None:
    chain, roots = _chain_through_leaf(**leaf_kw)
    verify_chain(chain[1:], trusted_roots=roots, now=NOW, log=CheckLog())  # the honest chain
    with pytest.raises(AttestationError) as info:
        verify_chain(chain, trusted_roots=roots, now=NOW, log=CheckLog())
    assert info.value.code == "attestation.chain_invalid"


def test_path_length_and_key_usage_of_issuers_are_enforced() -> None:
    root_k, a_k, b_k, leaf_k = _key(), _key(), _key(), _key()
    root = _cert("Root", root_k, "Root", root_k, ca=True)
    roots = frozenset({fingerprint(root)})
    a = _cert("A", a_k, "Root", root_k, ca=True, path_length=0)
    b = _cert("B", b_k, "A", a_k, ca=True)
    leaf = _cert("Leaf", leaf_k, "B", b_k, ca=False)
    with pytest.raises(AttestationError, match="path length"):
        verify_chain([leaf, b, a, root], trusted_roots=roots, now=NOW, log=CheckLog())
    no_sign = _cert("A", a_k, "Root", root_k, ca=True, key_cert_sign=False)
    leaf_a = _cert("Leaf", leaf_k, "A", a_k, ca=False)
    with pytest.raises(AttestationError, match="keyCertSign"):
        verify_chain([leaf_a, no_sign, root], trusted_roots=roots, now=NOW, log=CheckLog())
    verify_chain([leaf_a, a, root], trusted_roots=roots, now=NOW, log=CheckLog())


# --- TDX: a PCK key holder can neither extend the chain nor sign collateral --------------------


def _quote_with_chain(quote: bytes, chain: list[x509.Certificate],
                      signer: ec.EllipticCurvePrivateKey) -> bytes:
    """``quote`` re-issued with ``chain`` as its PCK chain and its QE report signed by ``signer``."""
    q = tdx_abi.parse_quote(quote)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    report = q.qe_report.raw
    inner = (report + raw_signature(signer, report)
             + struct.pack("<H", len(q.qe_auth_data)) + q.qe_auth_data
             + struct.pack("<HI", tdx_abi.CERT_TYPE_PCK_CHAIN, len(pem)) + pem)
    sig_data = (q.signature + q.attestation_key
                + struct.pack("<HI", tdx_abi.CERT_TYPE_QE_REPORT, len(inner)) + inner)
    return q.signed + struct.pack("<I", len(sig_data)) + sig_data


def _tdx_docs(vectors: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    bundle = json.loads((vectors / "tdx" / "dcap-qvl/tdx_quote_collateral.json").read_bytes())
    return json.loads(bundle["tcb_info"]), json.loads(bundle["qe_identity"])


@pytest.mark.vectors
def test_tdx_pck_key_holder_cannot_mint_a_pck_certificate(vectors: Path) -> None:
    pki = ForgePki()
    quote, leaf = pki.reissue((vectors / "tdx" / T7).read_bytes())
    opts = VerifyOptions(now=T7_TIME, trusted_roots=pki.roots)
    tdx.verify(quote, opts)  # the honest re-issued quote verifies under the test root
    ext = leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    minted_key = _key()
    minted = _cert("Test SGX PCK Certificate", minted_key, leaf.subject, pki.leaf_key, ca=False,
                   extensions=(ext,))
    forged = _quote_with_chain(quote, [minted, leaf, pki.ca, pki.root], minted_key)
    with pytest.raises(AttestationError) as info:
        tdx.verify(forged, opts)
    assert info.value.code == "attestation.chain_invalid"


@pytest.mark.vectors
def test_tdx_collateral_signed_by_a_pck_key_is_refused(vectors: Path) -> None:
    """Another platform's PCK key (say, extracted from an out-of-date machine) must not be able
    to sign a tcbInfo that calls this platform UpToDate: only the TCB Signing certificate may."""
    pki = ForgePki()
    quote, _ = pki.reissue((vectors / "tdx" / T7).read_bytes())
    tcb_info, qe_identity = _tdx_docs(vectors)
    honest = VerifyOptions(now=T7_TIME, trusted_roots=pki.roots, endorsements=Endorsements(
        collateral=(pki.signer_pem(), pki.signed_response("tcbInfo", tcb_info),
                    pki.signed_response("enclaveIdentity", qe_identity))))
    assert tdx.verify(quote, honest).tcb_status == "UpToDate"

    other_key = _key()
    ext = x509.UnrecognizedExtension(SGX_EXTENSION_OID, _sgx_ext(quote))
    other_pck = _cert("Test SGX PCK Certificate", other_key, pki.ca.subject, pki.ca_key,
                      ca=False, extensions=(ext,))
    body = json.dumps(tcb_info, separators=(",", ":")).encode()
    forged_doc = (b'{"tcbInfo":' + body + b',"signature":"'
                  + raw_signature(other_key, body).hex().encode() + b'"}')
    pem = other_pck.public_bytes(serialization.Encoding.PEM)
    forged = VerifyOptions(now=T7_TIME, trusted_roots=pki.roots, endorsements=Endorsements(
        collateral=(pem, forged_doc)))
    with pytest.raises(AttestationError) as info:
        tdx.verify(quote, forged)
    assert info.value.code == "attestation.collateral_invalid"


def _sgx_ext(quote: bytes) -> bytes:
    q = tdx_abi.parse_quote(quote)
    leaf = x509.load_pem_x509_certificates(q.pck_chain_pem.rstrip(b"\x00"))[0]
    value = leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


# --- secure: only the vendor's own root makes evidence hardware evidence ---------------------


@pytest.mark.vectors
def test_tdx_under_a_caller_root_is_not_secure(vectors: Path) -> None:
    pki = ForgePki()
    quote, _ = pki.reissue((vectors / "tdx" / T7).read_bytes())
    result = tdx.verify(quote, VerifyOptions(now=T7_TIME, trusted_roots=pki.roots))
    assert result.secure is False
    real = tdx.verify((vectors / "tdx" / T7).read_bytes(), VerifyOptions(now=T7_TIME))
    assert real.secure is True


@pytest.mark.vectors
def test_nvidia_under_a_caller_root_is_not_secure(vectors: Path) -> None:
    nv = load_nvidia(vectors)
    report = nv_abi.parse_report(nv.report)
    real_leaf_ext = nv.chain[0].extensions.get_extension_for_oid(OID_TCG_DICE_TCBINFO).value
    keys = [_key(ec.SECP384R1()) for _ in range(5)]
    names = ["Leaf", "BROM", "ICA", "Identity", "Root"]
    certs: list[x509.Certificate] = []
    for i in range(5):
        issuer = min(i + 1, 4)
        certs.append(_cert(names[i], keys[i], names[issuer], keys[issuer], ca=i > 0,
                           extensions=(real_leaf_ext,) if i == 0 else (),
                           hash_alg=hashes.SHA384()))
    der = keys[0].sign(report.signed, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    evidence = report.signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")
    opts = VerifyOptions(now=RIM_VALID_AT, endorsements=Endorsements(certificates=tuple(certs)),
                         trusted_roots=frozenset({fingerprint(certs[-1])}))
    assert nvidia.verify(evidence, opts).secure is False
    assert nvidia.verify(nv.report, nv.options()).secure is True


# --- appraisal ------------------------------------------------------------------------------


def _snp(secure: bool = True, **claims: Any) -> Verification:
    base = {"debug": False, "report_data": "00" * 64, "measurement": "aa" * 48}
    base.update(claims)
    return Verification(platform="sev-snp", claims=base, checks=(), secure=secure)


def test_policy_refuses_non_genuine_hardware_of_a_real_platform() -> None:
    """A chain to a caller-supplied root (trusted_roots) verifies but is not AMD's: secure=False.
    Naming sev-snp in a policy accepts AMD hardware, not whatever chain a config pinned."""
    with pytest.raises(PolicyError) as info:
        appraise(_snp(secure=False), default_policy(), now=NOW)
    assert info.value.code == "policy.platform_not_allowed"
    assert appraise(_snp(), default_policy(), now=NOW).accepted
    sim = Verification(platform="sim", claims={"debug": False}, checks=(), secure=False)
    assert appraise(sim, parse_policy(b'platforms = ["sim"]'), now=NOW).accepted


def test_max_evidence_age_without_an_evidence_time_is_refused() -> None:
    policy = parse_policy(b'platforms = ["sev-snp"]\nmax_evidence_age_seconds = 60')
    with pytest.raises(PolicyError) as info:
        appraise(_snp(), policy, now=NOW)
    assert info.value.code == "policy.evidence_stale"
    assert appraise(_snp(), policy, now=NOW, evidence_time=NOW - timedelta(seconds=30)).accepted


def test_require_gpu_is_enforced() -> None:
    policy = parse_policy(b'platforms = ["sev-snp", "nvidia"]\nrequire_gpu = true')
    result = appraisal_of(_snp(), policy, now=NOW)
    assert [v["code"] for v in result.violations] == ["policy.refused"]
    assert result.violations[0]["claim"] == "gpu"
    gpu = Verification(platform="nvidia", claims={}, checks=())
    assert appraisal_of(gpu, policy, now=NOW).accepted


@pytest.mark.parametrize("table", [
    b'[platform.sev-snp.rules]\nallow_smt = "false"',
    b'[platform.sev-snp.rules]\nallow_migration_agent = "no"',
    b'[platform.sev-snp.rules]\nvmpls = 0',
    b'[platform.sev-snp.rules]\nmin_guest_svn = "3"',
    b'[platform.sev-snp.rules]\nmin_guest_svn = true',
    b'[platform.sev-snp.rules]\nmeasurements = "aa"',
    b'[platform.sev-snp.rules]\nmin_tcb = {snp = "8"}',
    b'[platform.tdx.rules]\nallow_unknown_tcb = "false"',
    b'[platform.tdx.rules]\nmeasurements = {mr_td = "aa"}',
    b'[platform.tdx.rules]\nmin_qe_isvsvn = 1.5',
])
def test_mistyped_platform_rules_are_refused_at_load(table: bytes) -> None:
    """``allow_smt = "false"`` is a truthy string: read as-is it would switch the SMT check off."""
    with pytest.raises(PolicyError) as info:
        parse_policy(b'platforms = ["sev-snp", "tdx"]\n' + table)
    assert info.value.code == "policy.invalid"


def test_well_typed_platform_rules_still_load_and_apply() -> None:
    policy = parse_policy(b'platforms = ["sev-snp"]\n[platform.sev-snp.rules]\nallow_smt = false\n'
                          b'vmpls = [0]\nmin_tcb = {snp = 8}\nmeasurements = ["AA"]')
    claims: dict[str, Any] = {"debug": False, "policy_bits": {"migrate_ma": False}, "vmpl": 0,
              "platform_info_bits": {"smt_enabled": True}, "measurement": "aa",
              "reported_tcb_parts": {"snp": 8}}
    result = appraisal_of(_snp(**claims), policy, now=NOW)
    assert [v["code"] for v in result.violations] == ["policy.smt_forbidden"]


# --- parsing: a certificate with an invalid X.509 version is a MedclaveError -----------------


def _bad_version_der() -> bytes:
    key = _key()
    der = _cert("Root", key, "Root", key, ca=True).public_bytes(serialization.Encoding.DER)
    version = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (v3)
    assert der.count(version) == 1
    return der.replace(version, bytes.fromhex("a003020107"))


def test_invalid_certificate_version_is_a_malformed_error() -> None:
    from medclave.attestation.x509chain import load_certificates

    der = _bad_version_der()
    pem = (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der)
           + b"-----END CERTIFICATE-----\n")
    for blob in (der, pem):
        with pytest.raises(AttestationError) as info:
            load_certificates(blob)
        assert info.value.code == "attestation.malformed"


def test_invalid_certificate_version_in_a_rim_is_a_rim_error() -> None:
    from medclave.attestation.nvidia import rim

    cert = base64.b64encode(_bad_version_der()).decode()
    doc = (f'<SoftwareIdentity xmlns="{rim.SWID_NS}"><ds:Signature xmlns:ds="{rim.DSIG_NS}">'
           '<ds:SignedInfo><ds:Reference URI=""/></ds:SignedInfo><ds:KeyInfo><ds:X509Data>'
           f'<ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>'
           '</ds:Signature></SoftwareIdentity>').encode()
    with pytest.raises(AttestationError) as info:
        rim.verify_rim(doc, now=NOW)
    assert info.value.code == "attestation.rim_invalid"


def test_invalid_crl_version_is_a_malformed_error() -> None:
    from medclave.attestation.x509chain import load_crl

    key = _key()
    der = (x509.CertificateRevocationListBuilder().issuer_name(_name("CA"))
           .last_update(_FROM).next_update(_TO).sign(key, hashes.SHA256())
           .public_bytes(serialization.Encoding.DER))
    version = bytes.fromhex("020101")  # INTEGER 1 (v2), the first element of TBSCertList
    assert der.count(version) == 1
    with pytest.raises(AttestationError) as info:
        load_crl(der.replace(version, bytes.fromhex("020111")))
    assert info.value.code == "attestation.malformed"


# --- TDX without QE identity collateral: the QE must still be Intel's -------------------------


def _with_qe_field(report: bytes, offset: int, value: bytes) -> bytes:
    return report[:offset] + value + report[offset + len(value):]


@pytest.mark.vectors
@pytest.mark.parametrize("offset,value", [
    (128, bytes(range(32))),  # MRSIGNER: an enclave the operator signed and launched (FLC)
    (256, b"\x01\x00"),  # ISVPRODID: Intel's SGX QE, not the TD QE
    (48, b"\x17"),  # ATTRIBUTES.DEBUG: a debug QE whose attestation key the host can read
])
def test_tdx_quote_from_a_rogue_quoting_enclave_is_refused(vectors: Path, offset: int,
                                                           value: bytes) -> None:
    """The PCE certifies any enclave the platform owner grants PROVISIONKEY (flexible launch
    control), so the PCK signature alone does not show the QE is Intel's; the QE identity does.
    Without QE identity collateral, Intel's TD QE identity (MRSIGNER, ISVPRODID 2, no DEBUG) is
    required as a pin."""
    pki = ForgePki()
    real = (vectors / "tdx" / T7).read_bytes()
    report = tdx_abi.parse_quote(real).qe_report.raw
    honest, _ = pki.reissue(real)
    opts = VerifyOptions(now=T7_TIME, trusted_roots=pki.roots)
    assert tdx.verify(honest, opts).tcb_status == "unknown"
    rogue, _ = pki.reissue(real, qe_report=_with_qe_field(report, offset, value))
    with pytest.raises(AttestationError) as info:
        tdx.verify(rogue, opts)
    assert info.value.code == "attestation.qe_identity_mismatch"


# --- deeply nested JSON/TOML is a refusal, not a RecursionError ------------------------------


def test_deeply_nested_input_is_refused_with_a_medclave_error() -> None:
    from medclave.attestation.verifier import detect
    from medclave.errors import MedclaveError

    deep = b"[" * 100_000
    # A bundle-shaped document that is too deep is simply not a bundle (and no evidence either).
    with pytest.raises(MedclaveError):
        detect(b'{"platform": "sim", "evidence": "", "runtime": ' + deep)
    for text in (b'{"platforms": ' + deep, b"platforms = " + deep):
        with pytest.raises(PolicyError) as info:
            parse_policy(text)
        assert info.value.code == "policy.invalid"
