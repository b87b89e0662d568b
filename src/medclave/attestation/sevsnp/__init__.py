"""AMD SEV-SNP: the platform entry points (``registry.PlatformVerifier``) over abi/certs/verify.

Accepted evidence: the 1184-byte ATTESTATION_REPORT, the same as hex text, or an extended
report (the report followed by its GHCB certificate table). Claims are lower-case hex for byte
fields, 16 hex digits for u64 fields (``policy``, ``*_tcb``, ``platform_info``), and natural
ints/bools elsewhere; ``product`` is None in ``parse`` for a v2 report (no CPUID) and always
set by ``verify``.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from medclave.attestation.core import (
    CheckLog,
    Claims,
    Verification,
    VerifyOptions,
    require_size,
    sha256_hex,
)
from medclave.attestation.sevsnp.abi import (
    REPORT_SIZE,
    Product,
    Report,
    decode_platform_info,
    decode_tcb,
    encode_report,
    fw_version,
    hex_u64,
    looks_like_report,
    parse_report,
)
from medclave.attestation.sevsnp.certs import (
    MAX_CERT_TABLE_BYTES,
    certificates_from_table,
    kds_extensions,
    parse_cert_table,
)
from medclave.attestation.sevsnp.chain import (
    PINNED_ARKS,
    SnpChain,
    clear_chain_cache,
    verify_endorsements,
)
from medclave.attestation.sevsnp.rules import SnpRules, appraise
from medclave.attestation.sevsnp.verify import SnpVerified, verify_report
from medclave.errors import AttestationError

PLATFORM = "sev-snp"
_TEXT_START = frozenset(bytes([c]) for c in b"0123456789abcdefABCDEF \t\r\n")

__all__ = [
    "PINNED_ARKS",
    "PLATFORM",
    "Report",
    "SnpChain",
    "SnpRules",
    "SnpVerified",
    "appraise",
    "claims_of",
    "clear_chain_cache",
    "detect",
    "encode_report",
    "kds_extensions",
    "parse",
    "parse_report",
    "signed_bytes",
    "split_evidence",
    "verify",
    "verify_endorsements",
    "verify_report",
]


def split_evidence(data: bytes) -> tuple[Report, tuple[x509.Certificate, ...]]:
    """The report and any certificates of an extended report (report || certificate table)."""
    require_size(data, maximum=REPORT_SIZE + MAX_CERT_TABLE_BYTES)
    # A binary report starts with its version (2, 3 or 5), never with a hex digit or a space.
    if len(data) > REPORT_SIZE and data[:1] not in _TEXT_START:
        return parse_report(data[:REPORT_SIZE]), certificates_from_table(data[REPORT_SIZE:])
    return parse_report(data), ()


def detect(data: bytes) -> str | None:
    """``"sev-snp"`` for a report (binary, hex text, or with a certificate table), else None."""
    if len(data) > REPORT_SIZE + MAX_CERT_TABLE_BYTES:
        return None
    if looks_like_report(data):
        return PLATFORM
    if len(data) > REPORT_SIZE and looks_like_report(data[:REPORT_SIZE]):
        try:
            parse_cert_table(data[REPORT_SIZE:])
        except AttestationError:
            return None
        return PLATFORM
    return None


def claims_of(report: Report, product: Product | None) -> dict[str, Any]:
    """The claims of ``report``; TCB parts are decoded in ``product``'s layout."""
    policy = report.guest_policy
    claims: dict[str, Any] = {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": hex_u64(report.policy),
        "policy_bits": policy.to_dict(),
        "debug": policy.debug,
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "vmpl": report.vmpl,
        "signature_algo": report.signature_algo,
        "platform_info": hex_u64(report.platform_info),
        "platform_info_bits": decode_platform_info(report.platform_info),
        "signing_key": report.signing_key,
        "author_key_en": report.author_key_en,
        "mask_chip_key": report.mask_chip_key,
        "mask_chip_id": report.mask_chip_id,
        "report_data": report.report_data.hex(),
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "chip_id": report.chip_id.hex(),
        "product": product,
        "current_fw": fw_version(report.current_major, report.current_minor,
                                 report.current_build),
        "committed_fw": fw_version(report.committed_major, report.committed_minor,
                                   report.committed_build),
    }
    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        raw = int(getattr(report, name))
        claims[name] = hex_u64(raw)
        claims[f"{name}_parts"] = decode_tcb(raw, product).to_dict()
    if report.cpuid_fam_id is not None:
        claims["cpuid"] = {"family": report.cpuid_fam_id, "model": report.cpuid_mod_id,
                           "stepping": report.cpuid_step}
    if report.launch_mit_vector is not None:
        claims["launch_mit_vector"] = hex_u64(report.launch_mit_vector)
        claims["current_mit_vector"] = hex_u64(report.current_mit_vector or 0)
    return claims


def parse(data: bytes) -> Claims:
    """Claims of a report without any cryptography (``verify`` is what makes them true)."""
    report, _ = split_evidence(data)
    return claims_of(report, report.cpuid_product)


def signed_bytes(data: bytes) -> bytes:
    """Report bytes [0, 0x2A0): what the VCEK/VLEK signed (the signature and any certificate
    table are not in it)."""
    report, _ = split_evidence(data)
    return report.signed_bytes


def verify(data: bytes, options: VerifyOptions) -> Verification:
    """Verify a report end to end; raises :class:`AttestationError` on the first failure."""
    log = CheckLog()
    try:
        report, table_certs = split_evidence(data)
    except AttestationError as exc:
        raise log.fail("report structure", exc.code, exc.detail) from exc
    log.ok("report structure", f"SNP report v{report.version}, {report.signing_key.upper()}"
                               + (f", {len(table_certs)} certificate(s) attached"
                                  if table_certs else ""))
    verified = verify_report(report, table_certs, options=options, log=log)
    claims = claims_of(report, verified.product)
    return Verification(
        platform=PLATFORM,
        claims=claims,
        checks=log.checks,
        # Only AMD's own roots make this hardware evidence; a trusted_roots chain (sim, tests)
        # verifies the same way but protects nothing.
        secure=verified.amd_root,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(report.signed_bytes),
    )
