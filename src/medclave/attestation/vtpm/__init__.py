"""vTPM platforms: Azure confidential VMs (``az-snp-vtpm``, ``az-tdx-vtpm``) and plain TPM 2.0.

Evidence is the JSON the Confidential Containers attestation agent produces (``coco``). The
modules: ``tpm2`` (TPM 2.0 structures and quote verification), ``hcl`` (the Azure HCL report
binding the vTPM to the hardware), ``coco`` (evidence formats), ``flows`` (the checks in order).
"""

from __future__ import annotations

from medclave.attestation.core import CheckLog, Claims, Verification, VerifyOptions, require_size
from medclave.attestation.vtpm import coco, flows
from medclave.errors import AttestationError

PLATFORMS: tuple[str, ...] = (coco.AZ_SNP, coco.AZ_TDX, coco.TPM)


def detect(data: bytes) -> str | None:
    """``"az-snp-vtpm"``, ``"az-tdx-vtpm"`` or ``"tpm"`` for evidence JSON in those formats."""
    if data.lstrip()[:1] != b"{":
        return None
    try:
        require_size(data)
        return coco.classify(coco.load(data))
    except AttestationError:
        return None


def parse(data: bytes) -> Claims:
    """The claims the evidence states, with no cryptographic check (for inspection only)."""
    require_size(data)
    return flows.parse_claims(coco.decode(data))


def signed_bytes(data: bytes) -> bytes:
    """The signed parts that identify the evidence (``flows.signed_bytes``); no cryptography."""
    require_size(data)
    return flows.signed_bytes(coco.decode(data))


def verify(data: bytes, options: VerifyOptions) -> Verification:
    """Verify vTPM evidence; raise :class:`AttestationError` with the checks done so far."""
    log = CheckLog()
    try:
        require_size(data)
        evidence = coco.decode(data)
    except AttestationError as exc:
        raise log.fail("evidence format", exc.code, exc.detail) from exc
    if isinstance(evidence, coco.TpmEvidence):
        log.ok("evidence format", "tpm: AK public key and TPM2 quote")
        return flows.verify_tpm(data, evidence, options, log)
    log.ok("evidence format", f"{evidence.kind} v{evidence.version}")
    return flows.verify_azure(data, evidence, options, log)
