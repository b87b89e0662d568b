"""The online endorsement providers: the only code in ``attestation`` that reaches the network.

The verifiers never import this package; they see the protocols of
:mod:`medclave.attestation.providers`. ``kds`` is the AMD KDS client, ``ocsp`` the OCSP client for
NVIDIA's responder, and :class:`OnlineEndorsements` both, behind ``medclave attest verify --online``.

Verification is offline unless the caller hands one of these in ``VerifyOptions.online``. One
object serves every platform: AMD's key distribution service for SNP endorsements (VCEK, chain,
CRL; cached on disk), NVIDIA's OCSP responder for the GPU device chain, and Google's
Confidential Space signing keys (JWKS, over TLS: a JWKS has no chain, so TLS to Google is what
authenticates it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import httpx
from cryptography import x509

from medclave.attestation.online.kds import KdsProvider
from medclave.attestation.online.ocsp import HttpxOcspProvider
from medclave.attestation.providers import CertStatus
from medclave.attestation.sevsnp.abi import Product, Report
from medclave.attestation.sevsnp.chain import Kind
from medclave.errors import AttestationError

PRODUCTS: tuple[Product, ...] = ("Milan", "Genoa", "Turin")
# The jwks_uri of https://confidentialcomputing.googleapis.com/.well-known/openid-configuration.
CONFIDENTIAL_SPACE_JWKS = ("https://www.googleapis.com/service_accounts/v1/metadata/jwk/"
                           "signer@confidentialspace-sign.iam.gserviceaccount.com")
MAX_JWKS_BYTES = 64 * 1024


class OnlineEndorsements:
    """An :class:`~medclave.attestation.providers.EndorsementProvider`: AMD KDS and NVIDIA OCSP
    over one ``httpx.Client``."""

    def __init__(self, *, cache_dir: Path, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(timeout=10.0, follow_redirects=False)
        # A v2 report names no product (no CPUID): ask KDS for each in turn; the VCEK of the
        # wrong product does not exist there, and a chain of the wrong product is refused anyway.
        self._kds = {
            product: KdsProvider(client=self._client, cache_dir=cache_dir, product=product)
            for product in PRODUCTS
        }
        self._ocsp = HttpxOcspProvider(self._client)

    def snp_endorsements(
        self, report: Report, *, product: Product | None, kind: Kind, now: datetime,
        have: Sequence[x509.Certificate],
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.CertificateRevocationList, ...]]:
        if product is not None:
            return self._kds[product].snp_endorsements(report, product=product, kind=kind,
                                                       now=now, have=have)
        last: AttestationError | None = None
        for candidate, kds in self._kds.items():
            try:
                return kds.snp_endorsements(report, product=candidate, kind=kind, now=now,
                                            have=have)
            except AttestationError as exc:
                last = exc
        assert last is not None
        raise last

    def certificate_status(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: datetime
    ) -> CertStatus:
        return self._ocsp.certificate_status(cert, issuer, now=now)

    def confidential_space_jwks(self) -> bytes:
        """Google's Confidential Space token signing keys, fetched now (never cached: they
        rotate, and a stale set fails closed anyway)."""
        try:
            response = self._client.get(CONFIDENTIAL_SPACE_JWKS)
        except httpx.HTTPError as exc:
            raise AttestationError("attestation.provider_offline",
                                   f"Confidential Space JWKS: {type(exc).__name__}") from exc
        if response.status_code != 200 or len(response.content) > MAX_JWKS_BYTES:
            raise AttestationError("attestation.provider_offline",
                                   f"Confidential Space JWKS: HTTP {response.status_code}")
        return response.content

    def close(self) -> None:
        self._client.close()
