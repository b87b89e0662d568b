"""Verify an SNP report: its endorsement chain, signature, TCB and chip id.

The order follows AMD's guidance (SEV-SNP ABI spec 56860, "Attestation"; KDS spec 57230):
the endorsement chain to a pinned ARK (``chain.py``), then the report's ECDSA P-384 signature
by the leaf over bytes [0, 0x2A0), then the leaf's TCB extensions against REPORTED_TCB and its
hwID against CHIP_ID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from medclave.attestation.core import CheckLog, VerifyOptions
from medclave.attestation.providers import SnpEndorsementSource
from medclave.attestation.sevsnp.abi import Product, Report, decode_tcb
from medclave.attestation.sevsnp.certs import common_name, product_of_name
from medclave.attestation.sevsnp.chain import (
    SnpChain,
    build_chain,
    crls_from_collateral,
    verify_snp_chain,
)
from medclave.errors import AttestationError


@dataclass(frozen=True)
class SnpVerified:
    """A report whose signature, chain, TCB and chip id all verified."""

    report: Report
    product: Product
    chain: SnpChain

    @property
    def amd_root(self) -> bool:
        """True when the chain ends at one of AMD's pinned ARKs (False for sim/test roots)."""
        return self.chain.pinned_product is not None


# --- the report ----------------------------------------------------------------------------------


def _product(report: Report, chain: SnpChain, log: CheckLog) -> Product:
    """CPUID (v3+), the root and the leaf's productName must name one product."""
    sources: list[tuple[str, Product]] = []
    if report.cpuid_product is not None:
        sources.append(("report CPUID", report.cpuid_product))
    chain_product = chain.pinned_product or chain.name_product
    if chain_product is not None:
        sources.append(("certificate chain", chain_product))
    if chain.extensions.product is not None:
        sources.append((f"{chain.kind.upper()} productName", chain.extensions.product))
    if not sources:
        raise log.fail("product", "attestation.chain_invalid",
                       "cannot tell the product (Milan/Genoa/Turin) from the report or its chain")
    first = sources[0][1]
    for where, product in sources[1:]:
        if product != first:
            raise log.fail(
                "product", "attestation.chain_invalid",
                f"{sources[0][0]} says {first} but {where} says {product}: wrong product chain",
            )
    log.ok("product", f"{first} ({', '.join(w for w, _ in sources)})")
    return first


def _verify_signature(report: Report, leaf: x509.Certificate, log: CheckLog) -> None:
    step = "report signature"
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise log.fail(step, "attestation.signature_invalid",
                       "the report is signed with ECDSA P-384 but the endorsement key is not P-384")
    r, s = report.signature_rs
    if r == 0 or s == 0:
        raise log.fail(step, "attestation.signature_invalid", "signature is zero")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise log.fail(step, "attestation.signature_invalid",
                       f"ECDSA P-384/SHA-384 over bytes [0, 0x2A0) does not verify with the "
                       f"{common_name(leaf)}") from exc
    log.ok(step, f"ECDSA P-384/SHA-384 by {common_name(leaf)}")


def _check_tcb_and_chip(report: Report, chain: SnpChain, product: Product, log: CheckLog) -> None:
    ext = chain.extensions
    label = chain.kind.upper()
    if ext.tcb_raw != report.reported_tcb:
        raise log.fail(
            "reported TCB", "attestation.tcb_mismatch",
            f"report REPORTED_TCB {decode_tcb(report.reported_tcb, product).to_dict()} "
            f"!= {label} {ext.tcb.to_dict()}",
        )
    log.ok("reported TCB", f"equals the {label} extensions {ext.tcb.to_dict()}")
    if chain.kind == "vlek":
        if ext.csp_id is None:
            raise log.fail("chip id", "attestation.chain_invalid", "the VLEK has no csp_id")
        log.ok("chip id", f"VLEK for {ext.csp_id}: not chip-bound, hwID not compared")
        return
    if ext.hwid is None:
        raise log.fail("chip id", "attestation.chip_id_mismatch", "the VCEK carries no hwID")
    if report.mask_chip_id:
        log.ok("chip id", "CHIP_ID masked (MASK_CHIP_ID); VCEK hwID not compared")
        return
    # Turin VCEKs carry an 8-byte hwID: only that prefix of CHIP_ID names the chip.
    if report.chip_id[:len(ext.hwid)] != ext.hwid:
        raise log.fail("chip id", "attestation.chip_id_mismatch",
                       f"CHIP_ID {report.chip_id[:len(ext.hwid)].hex()} != VCEK hwID "
                       f"{ext.hwid.hex()}")
    log.ok("chip id", f"equals the VCEK hwID {ext.hwid.hex()[:16]}…")


def _product_hint(report: Report, certs: Sequence[x509.Certificate]) -> Product | None:
    if report.cpuid_product is not None:
        return report.cpuid_product
    for cert in certs:
        product = product_of_name(common_name(cert))
        if product is not None:
            return product
    return None


def verify_report(
    report: Report,
    certificates: Sequence[x509.Certificate] = (),
    *,
    options: VerifyOptions,
    log: CheckLog,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> SnpVerified:
    """Everything cryptographic about one parsed report. Raises through ``log`` on failure.

    Certificates come from ``certificates`` (e.g. an extended report's table) plus
    ``options.endorsements.certificates``; CRLs from ``crls`` plus the collateral. The vTPM
    platform calls this with the SNP report it finds inside an Azure HCL report.
    """
    kind = report.signing_key
    if kind == "none" or report.mask_chip_key:
        why = "SIGNING_KEY is 7 (none)" if kind == "none" else "MASK_CHIP_KEY is set"
        raise log.fail("report signature", "attestation.signature_invalid",
                       f"the report is not signed by a chip key: {why}")
    try:
        certs = [*certificates, *options.endorsements.certificates]
        all_crls = [*crls, *crls_from_collateral(options.endorsements.collateral)]
        online = options.online
        if online is not None and isinstance(online, SnpEndorsementSource):
            try:
                fetched_certs, fetched_crls = online.snp_endorsements(
                    report, product=_product_hint(report, certs), kind=kind, now=options.now,
                    have=certs,
                )
            except AttestationError as exc:
                raise log.fail("online endorsements", exc.code, exc.detail) from exc
            certs.extend(fetched_certs)
            all_crls.extend(fetched_crls)
            log.ok("online endorsements",
                   f"{len(fetched_certs)} certificate(s), {len(fetched_crls)} CRL(s) fetched")
        chain = build_chain(certs, kind, log, report=report)
        verify_snp_chain(chain, trusted_roots=options.trusted_roots, now=options.now, log=log,
                         crls=all_crls)
        product = _product(report, chain, log)
        _verify_signature(report, chain.leaf, log)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography decodes certificate fields lazily: a malformed one fails on first use.
        raise log.fail("certificates", "attestation.malformed",
                       f"a certificate or CRL cannot be decoded: {exc}") from exc
    except AttestationError as exc:
        if exc.checks:
            raise
        raise log.fail("certificates", exc.code, exc.detail) from exc
    _check_tcb_and_chip(report, chain, product, log)
    return SnpVerified(report=report, product=product, chain=chain)


