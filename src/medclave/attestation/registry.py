"""Platforms by name. Adding a platform is one package in ``attestation/`` (with the entry points
of :class:`PlatformVerifier`) and one row in ``_PLATFORMS``."""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from medclave.attestation.core import Claims, Verification, VerifyOptions, sha256_hex
from medclave.errors import AttestationError


class PlatformVerifier(Protocol):
    """The entry points of every platform module.

    ``detect`` sniffs the content and returns the platform name it recognises (a module may
    serve several, as ``vtpm`` serves ``az-snp-vtpm``, ``az-tdx-vtpm`` and ``tpm``), else None.
    """

    def detect(self, data: bytes) -> str | None: ...

    def parse(self, data: bytes) -> Claims: ...

    def verify(self, data: bytes, options: VerifyOptions) -> Verification: ...

    def signed_bytes(self, data: bytes) -> bytes: ...


# The one table: each platform module and the names it serves, in detection order (most specific
# formats first: a sim report is in the SNP layout, so sim is asked before SNP).
_PLATFORMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("medclave.attestation.nitro", ("nitro",)),
    ("medclave.attestation.gcp", ("gcp-cs", "gce-tpm")),
    ("medclave.attestation.cca", ("cca",)),
    ("medclave.attestation.vtpm", ("az-snp-vtpm", "az-tdx-vtpm", "tpm")),
    ("medclave.attestation.nvidia", ("nvidia",)),
    ("medclave.attestation.tdx", ("tdx",)),
    ("medclave.attestation.sgx", ("sgx",)),
    ("medclave.attestation.sim", ("sim",)),
    ("medclave.attestation.sevsnp", ("sev-snp",)),
)
_BY_NAME: dict[str, str] = {name: module for module, served in _PLATFORMS for name in served}


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def get(name: str) -> PlatformVerifier:
    module = _BY_NAME.get(name)
    if module is None:
        raise AttestationError("attestation.unknown_platform", f"unknown platform {name!r}")
    return cast(PlatformVerifier, importlib.import_module(module))


def evidence_digest(platform: str, data: bytes) -> str:
    """SHA-256 (hex) of the bytes the evidence's signature covers: what identifies it, the same
    for every byte form of one report (see :mod:`medclave.attestation.core`). Parses only: it
    equals ``Verification.evidence_digest`` once the evidence verifies."""
    return sha256_hex(get(platform).signed_bytes(data))


def detect(data: bytes) -> str:
    """Name of the platform whose evidence format ``data`` is in (each module's ``detect``
    answers a name or None); ``attestation.unknown_platform`` when none recognises it."""
    for module, _ in _PLATFORMS:
        name = cast(PlatformVerifier, importlib.import_module(module)).detect(data)
        if name is not None:
            return name
    raise AttestationError("attestation.unknown_platform", "evidence format not recognised")
