"""Platforms by name. Adding a platform is one module in ``attestation/`` and one line here."""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from medclave.attestation.core import Claims, Verification, VerifyOptions, sha256_hex
from medclave.errors import AttestationError


class Platform(Protocol):
    """The entry points of every platform module.

    ``detect`` sniffs the content and returns the platform name it recognises (a module may
    serve several, as ``vtpm`` serves ``az-snp-vtpm``, ``az-tdx-vtpm`` and ``tpm``), else None.
    """

    def detect(self, data: bytes) -> str | None: ...

    def parse(self, data: bytes) -> Claims: ...

    def verify(self, data: bytes, options: VerifyOptions) -> Verification: ...

    def signed_bytes(self, data: bytes) -> bytes: ...


_BY_NAME: dict[str, str] = {
    "sev-snp": "medclave.attestation.sevsnp",
    "tdx": "medclave.attestation.tdx",
    "nvidia": "medclave.attestation.nvidia",
    "az-snp-vtpm": "medclave.attestation.vtpm",
    "az-tdx-vtpm": "medclave.attestation.vtpm",
    "tpm": "medclave.attestation.vtpm",
    "sim": "medclave.attestation.sim",
    "nitro": "medclave.attestation.nitro",
    "sgx": "medclave.attestation.sgx",
    "gcp-cs": "medclave.attestation.gcp",
    "gce-tpm": "medclave.attestation.gcp",
    "cca": "medclave.attestation.cca",
}

# Most specific formats first: a sim report is in the SNP layout, so sim is asked before SNP.
_DETECTION_ORDER: tuple[str, ...] = (
    "medclave.attestation.nitro",
    "medclave.attestation.gcp",
    "medclave.attestation.cca",
    "medclave.attestation.vtpm",
    "medclave.attestation.nvidia",
    "medclave.attestation.tdx",
    "medclave.attestation.sgx",
    "medclave.attestation.sim",
    "medclave.attestation.sevsnp",
)


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def get(name: str) -> Platform:
    module = _BY_NAME.get(name)
    if module is None:
        raise AttestationError("attestation.unknown_platform", f"unknown platform {name!r}")
    return cast(Platform, importlib.import_module(module))


def evidence_digest(platform: str, data: bytes) -> str:
    """SHA-256 (hex) of the bytes the evidence's signature covers: what identifies it, the same
    for every byte form of one report (see :mod:`medclave.attestation.core`). Parses only: it
    equals ``Verification.evidence_digest`` once the evidence verifies."""
    return sha256_hex(get(platform).signed_bytes(data))


def detect(data: bytes) -> str:
    """Name of the platform whose evidence format ``data`` is in."""
    for module in _DETECTION_ORDER:
        name = cast(Platform, importlib.import_module(module)).detect(data)
        if name is not None:
            return name
    raise AttestationError("attestation.unknown_platform", "evidence format not recognised")
