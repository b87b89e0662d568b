"""NVIDIA H100 confidential computing: SPDM 1.1 measurement evidence and reference manifests.

Registry entry points (see ``attestation.registry.PlatformVerifier``):

* ``detect(data)`` -> ``"nvidia"`` for nvtrust's hex text (or the raw bytes) of a
  GET_MEASUREMENTS request followed by its MEASUREMENTS response, else None;
* ``parse(data)`` -> claims, no cryptography;
* ``verify(data, options)`` -> :class:`~medclave.attestation.core.Verification`. The GPU chain
  (5 PEM certificates, leaf first) comes in ``options.endorsements.certificates``; driver and
  VBIOS RIM SWID tags, as raw bytes, in ``options.endorsements.collateral``.

Modules: ``abi`` (parsing), ``verify`` (chain, signature, nonce, FWID), ``rim`` (reference
manifests), ``rules`` (NVIDIA policy rules, ``appraise``); OCSP only through a provider
(``attestation.providers``).
"""

from __future__ import annotations

from medclave.attestation.core import Claims, Verification, VerifyOptions
from medclave.attestation.nvidia import abi
from medclave.attestation.nvidia.verify import PLATFORM, verify_report

__all__ = ["PLATFORM", "detect", "parse", "signed_bytes", "verify"]


def detect(data: bytes) -> str | None:
    return PLATFORM if abi.looks_like_evidence(data) else None


def parse(data: bytes) -> Claims:
    return abi.report_claims(abi.parse_report(data))


def signed_bytes(data: bytes) -> bytes:
    """The request and the response up to its signature (trailing unsigned bytes excluded)."""
    return abi.parse_report(data).signed


def verify(data: bytes, options: VerifyOptions) -> Verification:
    return verify_report(data, options)
