"""Google Cloud: Confidential Space attestation tokens (``gcp-cs``, module ``cs``) and the vTPM
attestation of GCE Shielded and Confidential VMs (``gce-tpm``, module ``tpm``)."""

from __future__ import annotations

from medclave.attestation.core import Claims, Verification, VerifyOptions, require_size
from medclave.attestation.gcp import cs
from medclave.errors import AttestationError

PLATFORMS: tuple[str, ...] = (cs.PLATFORM,)


def detect(data: bytes) -> str | None:
    if cs.looks_like_token(data):
        return cs.PLATFORM
    return None


def _which(data: bytes) -> str:
    require_size(data)
    name = detect(data)
    if name is None:
        raise AttestationError("attestation.malformed", "not Confidential Space or GCE evidence")
    return name


def parse(data: bytes) -> Claims:
    _which(data)
    return cs.parse(data)


def signed_bytes(data: bytes) -> bytes:
    _which(data)
    return cs.signed_bytes(data)


def verify(data: bytes, options: VerifyOptions) -> Verification:
    require_size(data)
    return cs.verify(data, options)
