"""The one explicit interface between the verifiers and the network: online endorsement
providers.

Verification is offline by default. A caller who wants endorsements fetched (AMD KDS for SEV-SNP
certificates and CRLs, NVIDIA's OCSP responder for the GPU chains, Google's Confidential Space
JWKS) passes a provider in
``VerifyOptions.online``; the verifiers see only the protocols below and never import an HTTP
client (``tests/unit/test_import_rules.py`` holds them to it). The providers that do reach the
network live in :mod:`medclave.attestation.online` (``OnlineEndorsements``, the KDS client and the
OCSP client) and are loaded only by whoever constructs one (``medclave attest verify --online``).

What a provider returns is untrusted input like any other endorsement: certificates go through
the same chain walk to the pinned roots, OCSP answers are verified before they are believed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from cryptography import x509

from medclave.attestation.core import CheckLog
from medclave.errors import AttestationError

if TYPE_CHECKING:
    from medclave.attestation.sevsnp.abi import Product, Report
    from medclave.attestation.sevsnp.chain import Kind

CertStatus = Literal["good", "revoked", "unknown"]


@runtime_checkable
class SnpEndorsementSource(Protocol):
    """Fetches the SEV-SNP certificates (VCEK or VLEK, ASK, ARK) and CRLs a report needs."""

    def snp_endorsements(
        self, report: Report, *, product: Product | None, kind: Kind, now: datetime,
        have: Sequence[x509.Certificate],
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.CertificateRevocationList, ...]]: ...


@runtime_checkable
class OcspSource(Protocol):
    """Answers the revocation status of ``cert`` issued by ``issuer`` at ``now``.

    Raises :class:`AttestationError` (``attestation.provider_offline`` when unreachable,
    ``attestation.collateral_invalid`` for a response that does not verify).
    """

    def certificate_status(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: datetime
    ) -> CertStatus: ...


@runtime_checkable
class JwksSource(Protocol):
    """Fetches Google's Confidential Space token signing keys (a JWKS document, bytes).

    Raises :class:`AttestationError` (``attestation.provider_offline``) when unreachable. The
    bytes are untrusted: the verifier parses them under its own bounds.
    """

    def confidential_space_jwks(self) -> bytes: ...


@runtime_checkable
class EndorsementProvider(SnpEndorsementSource, OcspSource, Protocol):
    """Both: what ``VerifyOptions.online`` holds for evidence of any platform (a provider may
    also be a :class:`JwksSource`, as ``OnlineEndorsements`` is, for Confidential Space)."""


def check_chain_online(
    provider: object,
    chain: Sequence[x509.Certificate],
    *,
    now: datetime,
    log: CheckLog,
    name: str,
    skip_leaf: bool,
) -> None:
    """Every link of ``chain`` (leaf first) except the root, and the leaf unless ``skip_leaf``.

    As nvtrust does (``CcAdminUtils.ocsp_certificate_chain_validation``), a GPU device chain is
    checked from the certificate above the leaf (the GSP FMC LF key is derived on the GPU at boot,
    so no responder knows it) up to, not including, the root; a RIM chain from its signer up.
    """
    if not isinstance(provider, OcspSource):
        raise log.fail(name, "attestation.provider_offline",
                       "options.online has no certificate_status(cert, issuer, now=...)")
    start = 1 if skip_leaf else 0
    links = list(zip(chain[start:-1], chain[start + 1:], strict=False))
    for cert, issuer in links:
        subject = cert.subject.rfc4514_string()
        try:
            status = provider.certificate_status(cert, issuer, now=now)
        except AttestationError as exc:
            raise log.fail(name, exc.code, f"{subject}: {exc.detail}") from exc
        if status == "revoked":
            raise log.fail(name, "attestation.certificate_revoked", f"{subject} is revoked (OCSP)")
        if status != "good":
            raise log.fail(name, "attestation.collateral_invalid",
                           f"{subject}: OCSP status {status!r}, not good")
    log.ok(name, f"{len(links)} certificates good")
