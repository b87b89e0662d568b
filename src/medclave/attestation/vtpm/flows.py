"""Verification of vTPM evidence: the chain of trust from the hardware to the PCRs.

Azure (az-snp-vtpm, az-tdx-vtpm), in trust order:

1. The hardware report is genuine: the SEV-SNP report under its VCEK chain to a pinned AMD root,
   or the TD quote under its PCK chain to the Intel root (the platform verifiers do this).
2. The HCL report binds the vTPM: report_data = H(variable data) || zeros (hcl.py), and for SNP
   the report was requested at VMPL 0, where the paravisor runs.
3. The TPM quote is signed by HCLAkPub from that variable data (TPM 2.0 Part 3 §18.4).
4. The quoted PCR digest is the hash of the supplied PCR values (Part 2 §10.12.4).
5. extraData is the relying party's nonce, when one is expected.

Plain ``tpm``: no hardware vouches for the AK, so it must be pinned: its SubjectPublicKeyInfo
SHA-256 must be in ``options.trusted_roots`` (there is no default), then steps 3 to 5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509

from medclave.attestation import registry
from medclave.attestation.core import (
    Check,
    CheckLog,
    Claims,
    Endorsements,
    Verification,
    VerifyOptions,
    sha256_hex,
)
from medclave.attestation.vtpm import coco, hcl, tpm2
from medclave.attestation.x509chain import fingerprint
from medclave.errors import AttestationError

_HW_PLATFORM = {coco.AZ_SNP: "sev-snp", coco.AZ_TDX: "tdx"}


@dataclass(frozen=True)
class _Hardware:
    platform: str
    verification: Verification


def _merge_certs(
    first: tuple[x509.Certificate, ...], then: tuple[x509.Certificate, ...]
) -> tuple[x509.Certificate, ...]:
    seen: set[str] = set()
    out: list[x509.Certificate] = []
    for cert in (*first, *then):
        fp = fingerprint(cert)
        if fp not in seen:
            seen.add(fp)
            out.append(cert)
    return tuple(out)


def _verify_hardware(
    ev: coco.AzureEvidence, report: hcl.HclReport, options: VerifyOptions, log: CheckLog
) -> _Hardware:
    """Hand the hardware evidence to its platform verifier; its checks join ours, prefixed."""
    platform = _HW_PLATFORM[ev.kind]
    if ev.kind == coco.AZ_SNP:
        data = report.hw_report
        certificates = _merge_certs(ev.certificates, options.endorsements.certificates)
    else:
        data = ev.td_quote
        certificates = options.endorsements.certificates
    hw_options = VerifyOptions(
        now=options.now,
        endorsements=Endorsements(certificates=certificates,
                                  collateral=options.endorsements.collateral),
        trusted_roots=options.trusted_roots,
        expected_nonce=None,  # report_data holds the variable-data hash, checked below
        online=options.online,
    )
    try:
        result = _platform(platform).verify(data, hw_options)
    except AttestationError as exc:
        checks = (*log.checks, *(_prefixed(platform, c) for c in exc.checks))
        if not exc.checks:
            checks = (*checks, Check(f"{platform}: hardware report", False, exc.detail))
        raise AttestationError(exc.code, f"{platform}: {exc.detail}", checks=checks) from exc
    for check in result.checks:
        log.ok(f"{platform}: {check.name}", check.detail)
    return _Hardware(platform, result)


def _platform(name: str) -> registry.PlatformVerifier:
    try:
        return registry.get(name)
    except ImportError as exc:  # fail closed: no verifier, no verification
        raise AttestationError("attestation.unknown_platform",
                               f"the {name} verifier is not available: {exc}") from exc


def _prefixed(platform: str, check: Check) -> Check:
    return Check(f"{platform}: {check.name}", check.ok, check.detail)


def _hardware_report_data(hw: _Hardware, report: hcl.HclReport, log: CheckLog) -> bytes:
    """report_data from the verified hardware evidence (not from the unsigned HCL copy)."""
    if hw.platform == "sev-snp":
        return report.hw_report_data  # the very bytes the SNP verifier checked
    value = hw.verification.claims.get("report_data")
    try:
        if not isinstance(value, str):
            raise ValueError("absent")
        return bytes.fromhex(value)
    except ValueError as exc:
        raise log.fail("HCL binding", "attestation.binding_mismatch",
                       "the verified TD quote reports no report_data") from exc


def _parse_step(log: CheckLog, name: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except AttestationError as exc:
        if exc.checks:
            raise
        raise log.fail(name, exc.code, exc.detail) from exc


def _quote_claims(vq: tpm2.VerifiedQuote) -> dict[str, Any]:
    nonce = vq.attest.extra_data.hex()
    return {
        "pcrs": vq.pcr_banks.get("sha256", {}),
        "pcr_banks": vq.pcr_banks,
        "pcr_digest": vq.attest.pcr_digest.hex(),
        "nonce": nonce,
        # The quote's qualifying data is where a vTPM carries the relying party's binding
        # (the Medclave report_data), as the hardware report_data is taken by the HCL.
        "report_data": nonce,
        "ak_public": vq.ak_fingerprint,
        "tpm": vq.attest.claims(),
    }


def _azure_signed(ev: coco.AzureEvidence, report: hcl.HclReport) -> bytes:
    """The two signed parts: the TPMS_ATTEST the AK signed (length-prefixed, so the split is
    unambiguous) and the hardware report's signed bytes (core module docstring)."""
    hw_data = report.hw_report if ev.kind == coco.AZ_SNP else ev.td_quote
    hw_signed = _platform(_HW_PLATFORM[ev.kind]).signed_bytes(hw_data)
    attest = ev.quote.message
    return len(attest).to_bytes(4, "big") + attest + hw_signed


def signed_bytes(ev: coco.Evidence) -> bytes:
    """What identifies vTPM evidence: the TPMS_ATTEST alone for a plain TPM quote; for Azure,
    that and the hardware report's signed bytes."""
    if isinstance(ev, coco.TpmEvidence):
        return ev.quote.message
    return _azure_signed(ev, hcl.parse_hcl_report(ev.hcl_report))


def verify_azure(
    data: bytes, ev: coco.AzureEvidence, options: VerifyOptions, log: CheckLog
) -> Verification:
    report = _parse_step(log, "HCL report", hcl.parse_hcl_report, ev.hcl_report)
    expected_type = "snp" if ev.kind == coco.AZ_SNP else "tdx"
    if report.report_type != expected_type:
        raise log.fail("HCL report", "attestation.malformed",
                       f"{ev.kind} evidence carries a {report.report_type} HCL report")
    log.ok("HCL report", f"HCLA v{report.version}, {report.report_type} report, "
                         f"{len(report.var_data)} B variable data ({report.hash_type})")
    hw = _verify_hardware(ev, report, options, log)
    hcl.check_binding(report, _hardware_report_data(hw, report, log), log=log,
                      source="SEV-SNP" if hw.platform == "sev-snp" else "TD quote")
    if hw.platform == "sev-snp":
        hcl.check_snp_vmpl(report, log=log)
    var = _parse_step(log, "HCL variable data", hcl.parse_var_data, report.var_data)
    log.ok("HCL variable data", f"HCLAkPub {tpm2.key_fingerprint(var.ak_public)[:16]}…")
    vq = tpm2.verify_quote(ev.quote.message, ev.quote.signature, var.ak_public, ev.quote.pcrs,
                           expected_nonce=options.expected_nonce, log=log)
    claims: dict[str, Any] = {
        "evidence_version": ev.version,
        **_quote_claims(vq),
        "hcl": {"report_type": report.report_type, "hash_type": report.hash_type,
                **var.claims()},
        "hardware_platform": hw.platform,
        "hardware": dict(hw.verification.claims),
    }
    return Verification(
        platform=ev.kind,
        claims=claims,
        checks=log.checks,
        tcb_status=hw.verification.tcb_status,
        secure=hw.verification.secure,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(_azure_signed(ev, report)),
    )


def verify_tpm(
    data: bytes, ev: coco.TpmEvidence, options: VerifyOptions, log: CheckLog
) -> Verification:
    key = _parse_step(log, "AK public key", tpm2.load_public_key, ev.ak_public)
    fp = tpm2.key_fingerprint(key)
    if options.trusted_roots is None or fp not in options.trusted_roots:
        raise log.fail("AK public key", "attestation.root_untrusted",
                       f"AK {fp[:16]}… is not pinned; a plain TPM quote is only as good as its "
                       "AK, so pass its SHA-256 SPKI fingerprint as a trusted root")
    log.ok("AK public key", f"pinned AK {fp[:16]}…")
    vq = tpm2.verify_quote(ev.quote.message, ev.quote.signature, key, ev.quote.pcrs,
                           expected_nonce=options.expected_nonce, log=log)
    return Verification(
        platform=coco.TPM,
        claims=_quote_claims(vq),
        checks=log.checks,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(ev.quote.message),
    )


def parse_claims(ev: coco.Evidence) -> Claims:
    """Claims as stated by the evidence, nothing verified (``parse``)."""
    attest = tpm2.parse_attest(ev.quote.message)
    banks = tpm2.unverified_pcrs(attest, ev.quote.pcrs)
    claims: dict[str, Any] = {
        "pcrs": banks.get("sha256", {}),
        "pcr_banks": banks,
        "pcr_digest": attest.pcr_digest.hex(),
        "nonce": attest.extra_data.hex(),
        "report_data": attest.extra_data.hex(),
        "tpm": attest.claims(),
    }
    if isinstance(ev, coco.TpmEvidence):
        claims["ak_public"] = tpm2.key_fingerprint(tpm2.load_public_key(ev.ak_public))
        return claims
    report = hcl.parse_hcl_report(ev.hcl_report)
    var = hcl.parse_var_data(report.var_data)
    platform = _HW_PLATFORM[ev.kind]
    hw_data = report.hw_report if ev.kind == coco.AZ_SNP else ev.td_quote
    claims.update({
        "evidence_version": ev.version,
        "ak_public": tpm2.key_fingerprint(var.ak_public),
        "hcl": {"report_type": report.report_type, "hash_type": report.hash_type,
                **var.claims()},
        "hardware_platform": platform,
        "hardware": dict(_platform(platform).parse(hw_data)),
    })
    return claims
