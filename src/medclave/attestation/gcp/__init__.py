"""Google Cloud: Confidential Space attestation tokens (``gcp-cs``, module ``cs``) and the vTPM
attestation of GCE Shielded and Confidential VMs (``gce-tpm``, module ``tpm``)."""

from __future__ import annotations

from medclave.attestation.core import Claims, Verification, VerifyOptions, require_size
from medclave.attestation.gcp import cs, tpm
from medclave.errors import AttestationError

PLATFORMS: tuple[str, ...] = (cs.PLATFORM, tpm.PLATFORM)


def detect(data: bytes) -> str | None:
    if cs.looks_like_token(data):
        return cs.PLATFORM
    if tpm.looks_like_attestation(data):
        return tpm.PLATFORM
    return None


def _which(data: bytes) -> str:
    require_size(data)
    name = detect(data)
    if name is None:
        raise AttestationError("attestation.malformed", "not Confidential Space or GCE evidence")
    return name


def parse(data: bytes) -> Claims:
    return cs.parse(data) if _which(data) == cs.PLATFORM else tpm.parse(data)


def signed_bytes(data: bytes) -> bytes:
    return cs.signed_bytes(data) if _which(data) == cs.PLATFORM else tpm.signed_bytes(data)


def verify(data: bytes, options: VerifyOptions) -> Verification:
    """Confidential Space tokens start ``eyJ``; anything else is read as a GCE attestation (whose
    parser refuses what it is not), so a token that fails detection is still refused by it."""
    require_size(data)
    if data.lstrip().startswith(b"eyJ"):
        return cs.verify(data, options)
    return tpm.verify(data, options)
