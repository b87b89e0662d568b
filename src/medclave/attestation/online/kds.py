"""AMD Key Distribution Service (KDS) client: VCEK, ASK/ARK chain and CRL, with a disk cache.

Used only when a caller passes it explicitly as ``VerifyOptions.online``; nothing here runs
by default and no test touches the network (they use ``httpx.MockTransport``). What KDS
returns is untrusted input like any other endorsement: it goes through the same chain walk to
the pinned ARKs. URL forms follow the KDS interface specification (publication 57230):

- ``/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` (Turin: 8-byte hwID
  and ``fmcSPL``), DER;
- ``/{vcek|vlek}/v1/{product}/cert_chain``, PEM (ASK or ASVK, then ARK);
- ``/{vcek|vlek}/v1/{product}/crl``, DER, signed by the ARK.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import httpx
from cryptography import x509

from medclave.attestation.sevsnp.abi import Product, Report, decode_tcb
from medclave.attestation.sevsnp.certs import TURIN_HWID_SIZE, role_of
from medclave.attestation.sevsnp.chain import Kind
from medclave.attestation.x509chain import load_certificates, load_crl
from medclave.errors import AttestationError
from medclave.util.files import write_atomic

KDS_BASE_URL = "https://kdsintf.amd.com"
MAX_RESPONSE_BYTES = 256 * 1024


class KdsProvider:
    """Fetches what a report needs from KDS; responses are cached under ``cache_dir``.

    VCEKs and chains are immutable for a given URL and are cached for good; a cached CRL is
    used until its nextUpdate passes at the verification time. ``product`` is the fallback for
    v2 reports, which carry no CPUID, when no supplied certificate names the product.
    """

    def __init__(
        self,
        *,
        client: httpx.Client | None = None,
        cache_dir: Path | None = None,
        base_url: str = KDS_BASE_URL,
        product: Product | None = None,
        fetch_crl: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._cache_dir = cache_dir
        self._base = base_url.rstrip("/")
        self._product = product
        self._fetch_crl = fetch_crl

    # -- URLs ---------------------------------------------------------------------------------

    def vcek_url(self, product: Product, report: Report) -> str:
        parts = decode_tcb(report.reported_tcb, product)
        if product == "Turin":
            hwid = report.chip_id[:TURIN_HWID_SIZE]
            query = (f"fmcSPL={parts.fmc}&blSPL={parts.bl}&teeSPL={parts.tee}"
                     f"&snpSPL={parts.snp}&ucodeSPL={parts.ucode}")
        else:
            hwid = report.chip_id
            query = f"blSPL={parts.bl}&teeSPL={parts.tee}&snpSPL={parts.snp}&ucodeSPL={parts.ucode}"
        return f"{self._base}/vcek/v1/{product}/{hwid.hex()}?{query}"

    def chain_url(self, product: Product, kind: Kind) -> str:
        return f"{self._base}/{kind}/v1/{product}/cert_chain"

    def crl_url(self, product: Product, kind: Kind) -> str:
        return f"{self._base}/{kind}/v1/{product}/crl"

    # -- fetching -------------------------------------------------------------------------------

    def _cache_path(self, url: str) -> Path | None:
        if self._cache_dir is None:
            return None
        return self._cache_dir / hashlib.sha256(url.encode()).hexdigest()

    def _cached(self, url: str) -> bytes | None:
        path = self._cache_path(url)
        if path is None or not path.is_file():
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return data if 0 < len(data) <= MAX_RESPONSE_BYTES else None

    def _store(self, url: str, data: bytes) -> None:
        path = self._cache_path(url)
        if path is None:
            return
        # Best effort: a cache that cannot be written costs a refetch, not a refusal. Write
        # then rename, so a concurrent reader never sees half a file.
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except OSError:
            return

    def _get(self, url: str) -> bytes:
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    hint = " (rate limited; retry later)" if response.status_code == 429 else ""
                    raise AttestationError(
                        "attestation.certificate_missing",
                        f"AMD KDS answered {response.status_code} for {url}{hint}",
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise AttestationError("attestation.certificate_missing",
                                               f"AMD KDS response for {url} is too large")
        except httpx.HTTPError as exc:
            raise AttestationError("attestation.certificate_missing",
                                   f"AMD KDS unreachable for {url}: {exc}") from exc
        return bytes(body)

    def fetch(self, url: str) -> bytes:
        cached = self._cached(url)
        if cached is not None:
            return cached
        data = self._get(url)
        self._store(url, data)
        return data

    # -- what the verifier asks for -----------------------------------------------------------

    def vcek(self, product: Product, report: Report) -> x509.Certificate:
        if report.mask_chip_id:
            raise AttestationError("attestation.certificate_missing",
                                   "CHIP_ID is masked: the VCEK cannot be looked up; supply it")
        certs = load_certificates(self.fetch(self.vcek_url(product, report)))
        if len(certs) != 1:
            raise AttestationError("attestation.malformed", "KDS VCEK response is not one cert")
        return certs[0]

    def chain(self, product: Product, kind: Kind) -> tuple[x509.Certificate, ...]:
        return tuple(load_certificates(self.fetch(self.chain_url(product, kind))))

    def crl(self, product: Product, kind: Kind, now: datetime) -> x509.CertificateRevocationList:
        url = self.crl_url(product, kind)
        cached = self._cached(url)
        if cached is not None:
            crl = load_crl(cached)
            if crl.next_update_utc is None or now <= crl.next_update_utc:
                return crl
        data = self._get(url)
        self._store(url, data)
        return load_crl(data)

    def snp_endorsements(
        self, report: Report, *, product: Product | None, kind: Kind, now: datetime,
        have: Sequence[x509.Certificate],
    ) -> tuple[tuple[x509.Certificate, ...], tuple[x509.CertificateRevocationList, ...]]:
        product = product or self._product
        if product is None:
            raise AttestationError(
                "attestation.certificate_missing",
                "the product is unknown (v2 report, no certificates): configure "
                "KdsProvider(product=...) or supply the chain",
            )
        roles = {role_of(c) for c in have}
        certs: list[x509.Certificate] = []
        if kind == "vcek" and "vcek" not in roles:
            certs.append(self.vcek(product, report))
        if not {"ask", "asvk"} & roles or "ark" not in roles:
            certs.extend(self.chain(product, kind))
        crls = (self.crl(product, kind, now),) if self._fetch_crl else ()
        return tuple(certs), crls
