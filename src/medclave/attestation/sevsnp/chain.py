"""The SNP endorsement chain: VCEK/VLEK -> ASK/ASVK -> ARK, found by name and verified.

The chain walk is by issuer name among the supplied certificates, and signatures go through
``cryptography`` (``x509chain.verify_chain``), so any key type it supports works for the sim
platform's own chain under ``VerifyOptions.trusted_roots``. Verified chains are cached by the
SHA-256 fingerprints of their certificates, CRLs and trust anchors, together with the time
window in which that verdict holds, so a repeated verification costs one ECDSA verify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from medclave.attestation.cache import VerdictCache
from medclave.attestation.core import CheckLog, VerifyOptions
from medclave.attestation.sevsnp.abi import Product, Report
from medclave.attestation.sevsnp.certs import (
    KdsExtensions,
    common_name,
    kds_extensions,
    product_of_name,
    role_of,
)
from medclave.attestation.x509chain import (
    MAX_CHAIN_LENGTH,
    fingerprint,
    load_crl,
    verify_chain,
)
from medclave.errors import AttestationError
from medclave.util.lru import Lru

# SHA-256 of the DER of AMD's root keys (from AMD KDS cert_chain / go-sev-guest verify/trust).
PINNED_ARKS: Mapping[str, Product] = MappingProxyType({
    "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd": "Milan",
    "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1": "Genoa",
    "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a": "Turin",
})

Kind = Literal["vcek", "vlek"]
_ISSUER_ROLE: Mapping[str, str] = {"vcek": "ask", "vlek": "asvk"}
MAX_CERTIFICATES = 32
MAX_CRLS = 32
MAX_CRL_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SnpChain:
    """A structurally complete endorsement chain, leaf first and root last."""

    kind: Kind
    chain: tuple[x509.Certificate, ...]
    extensions: KdsExtensions
    fingerprints: tuple[str, ...]  # SHA-256 of each certificate's DER, in chain order

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def root_fingerprint(self) -> str:
        return self.fingerprints[-1]

    @property
    def pinned_product(self) -> Product | None:
        """The product of the ARK when it is one of AMD's pinned roots."""
        return PINNED_ARKS.get(self.root_fingerprint)

    @property
    def name_product(self) -> Product | None:
        for cert in self.chain[1:]:
            product = product_of_name(common_name(cert))
            if product is not None:
                return product
        return None


# --- chain cache -------------------------------------------------------------------------------


# Chain descriptions ("VCEK -> ASK -> ARK") by (certificate, root and CRL fingerprints).
_CACHE: VerdictCache[tuple[object, ...], str] = VerdictCache(512)


def clear_chain_cache() -> None:
    """Forget every cached chain verdict (benchmarks measure the uncached path with it)."""
    _CACHE.clear()


# --- inputs -------------------------------------------------------------------------------------


def crls_from_collateral(collateral: Iterable[bytes]) -> tuple[x509.CertificateRevocationList, ...]:
    """CRLs (DER or PEM) among raw collateral; blobs that are not CRLs belong to others."""
    out: list[x509.CertificateRevocationList] = []
    for blob in collateral:
        if len(blob) > MAX_CRL_BYTES:
            continue
        is_pem = b"-----BEGIN X509 CRL-----" in blob
        if not is_pem and not blob.startswith(b"\x30"):
            continue
        try:
            crl = load_crl(blob)
        except AttestationError:
            if is_pem:  # announced itself as a CRL: a broken one is an error, not noise
                raise
            continue
        out.append(crl)
    if len(out) > MAX_CRLS:
        raise AttestationError("attestation.malformed", f"more than {MAX_CRLS} CRLs supplied")
    return tuple(out)


def _dedupe(certs: Iterable[x509.Certificate]) -> dict[str, x509.Certificate]:
    seen: dict[str, x509.Certificate] = {}
    for cert in certs:
        seen.setdefault(fingerprint(cert), cert)
        if len(seen) > MAX_CERTIFICATES:
            raise AttestationError("attestation.malformed", "too many certificates supplied")
    return seen


_EXTENSIONS: Lru[str, KdsExtensions] = Lru(512)


def _extensions(cert: x509.Certificate, fp: str) -> KdsExtensions:
    """``kds_extensions`` memoised by certificate fingerprint (a leaf is parsed once)."""
    hit = _EXTENSIONS.get(fp)
    if hit is not None:
        return hit
    ext = kds_extensions(cert)
    _EXTENSIONS.put(fp, ext)
    return ext


def _is_ca(cert: x509.Certificate) -> bool | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise AttestationError("attestation.malformed", f"certificate extensions: {exc}") from exc


def _leaf_candidates(certs: Sequence[x509.Certificate], kind: Kind) -> list[x509.Certificate]:
    named = [c for c in certs if role_of(c) == kind]
    if named:
        return named
    # Chains under trusted_roots (sim, tests) may use other names: an end-entity certificate
    # carrying the KDS extensions of the right kind (VCEK: hwID; VLEK: csp_id) is the leaf.
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    out = []
    for c in certs:
        if role_of(c) != "other" or c.subject in issuers or _is_ca(c):
            continue
        try:
            ext = kds_extensions(c)
        except AttestationError:
            continue
        if (ext.csp_id is not None) == (kind == "vlek"):
            out.append(c)
    return out


def _issuer_of(
    child: x509.Certificate, certs: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    named = [c for c in certs if c.subject == child.issuer and c is not child]
    if len(named) <= 1:
        return named[0] if named else None
    for cand in named:  # same name, several keys: the one whose signature holds
        try:
            child.verify_directly_issued_by(cand)
            return cand
        except (ValueError, TypeError, InvalidSignature):
            continue
    return named[0]


def build_chain(
    certs: Sequence[x509.Certificate], kind: Kind, log: CheckLog, *, report: Report | None = None
) -> SnpChain:
    """Pick the leaf of ``kind`` and walk issuer names up to a self-issued root (no crypto)."""
    step = f"{kind.upper()} chain"
    by_fp = _dedupe(certs)
    fp_of = {id(c): fp for fp, c in by_fp.items()}
    pool = list(by_fp.values())
    leaves = _leaf_candidates(pool, kind)
    if not leaves:
        other = "VLEK" if kind == "vcek" else "VCEK"
        has_other = any(role_of(c) == ("vlek" if kind == "vcek" else "vcek") for c in pool)
        raise log.fail(
            step, "attestation.certificate_missing",
            f"no {kind.upper()} certificate (CN=SEV-{kind.upper()}) among the endorsements"
            + (f"; a {other} was supplied but the report's KEY_INFO names the {kind.upper()}"
               if has_other else "; supply it or enable the online KDS provider"),
        )
    leaf = leaves[0]
    extensions: KdsExtensions | None = None
    if len(leaves) > 1 and report is not None:
        for cand in leaves:  # several leaves (e.g. old and new TCB): the one for this report
            ext = _extensions(cand, fp_of[id(cand)])
            if ext.tcb_raw == report.reported_tcb and (
                ext.hwid is None or report.chip_id.startswith(ext.hwid)
            ):
                leaf, extensions = cand, ext
                break
    try:
        extensions = extensions or _extensions(leaf, fp_of[id(leaf)])
    except AttestationError as exc:
        raise log.fail(step, exc.code, exc.detail) from exc
    if _is_ca(leaf):
        raise log.fail(step, "attestation.chain_invalid", f"{kind.upper()} is marked as a CA")
    chain = [leaf]
    while chain[-1].issuer != chain[-1].subject:
        if len(chain) >= MAX_CHAIN_LENGTH:
            raise log.fail(step, "attestation.chain_invalid", "certificate chain too long")
        issuer = _issuer_of(chain[-1], pool)
        if issuer is None or issuer in chain:
            missing = chain[-1].issuer.rfc4514_string()
            others = [common_name(c) for c in pool if c not in chain]
            if not others:
                raise log.fail(step, "attestation.certificate_missing",
                               f"no certificate for the issuer {missing}; supply the ASK/ARK chain")
            raise log.fail(
                step, "attestation.chain_invalid",
                f"{common_name(chain[-1])} is issued by {missing}, which is not among the "
                f"supplied certificates ({', '.join(others)}): wrong product or chain?",
            )
        chain.append(issuer)
    for depth, cert in enumerate(chain[1:]):
        if _is_ca(cert) is False:
            raise log.fail(step, "attestation.chain_invalid",
                           f"{common_name(cert)} issues certificates but is not a CA")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if bc.path_length is not None and depth > bc.path_length:
            raise log.fail(step, "attestation.chain_invalid",
                           f"{common_name(cert)} path length {bc.path_length} exceeded")
    if len(chain) > 1:
        issuer_role = role_of(chain[1])
        wrong = "asvk" if kind == "vcek" else "ask"
        if issuer_role == wrong:
            raise log.fail(step, "attestation.chain_invalid",
                           f"the {kind.upper()} must be issued by an {_ISSUER_ROLE[kind].upper()},"
                           f" not {common_name(chain[1])}")
    return SnpChain(kind=kind, chain=tuple(chain), extensions=extensions,
                    fingerprints=tuple(fp_of[id(c)] for c in chain))


def _crl_key(crl: x509.CertificateRevocationList) -> str:
    return hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).hexdigest()


def verify_snp_chain(
    chain: SnpChain,
    *,
    trusted_roots: Iterable[str] | None,
    now: datetime,
    log: CheckLog,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> None:
    """Signatures, validity at ``now``, pinning and CRLs of ``chain``; cached when it holds."""
    roots = frozenset(PINNED_ARKS if trusted_roots is None else trusted_roots)
    step = f"{chain.kind.upper()} chain"
    if chain.pinned_product is not None and len(chain.chain) != 3:
        raise log.fail(step, "attestation.chain_invalid",
                       f"an AMD chain is {chain.kind.upper()} -> ASK -> ARK, got "
                       f"{len(chain.chain)} certificates")
    key = (chain.fingerprints, roots, tuple(_crl_key(c) for c in crls))
    cached = _CACHE.get(key, now)
    if cached is not None:
        log.ok(step, f"{cached} (cached)")
        return
    verify_chain(chain.chain, trusted_roots=roots, now=now, log=log, name=step, crls=crls)
    start = max(c.not_valid_before_utc for c in chain.chain)
    end = min(c.not_valid_after_utc for c in chain.chain)
    chain_subjects = {c.subject for c in chain.chain}
    for crl in crls:
        if crl.issuer in chain_subjects:
            start = max(start, crl.last_update_utc)
            if crl.next_update_utc is not None:
                end = min(end, crl.next_update_utc)
    detail = " -> ".join(common_name(c) for c in chain.chain)
    _CACHE.put(key, detail, valid_from=start, valid_until=end)


def verify_endorsements(
    certificates: Sequence[x509.Certificate],
    *,
    kind: Kind,
    options: VerifyOptions,
    log: CheckLog,
) -> SnpChain:
    """Only the endorsement chain (no report), e.g. to check a VCEK before it is cached."""
    try:
        chain = build_chain([*certificates, *options.endorsements.certificates], kind, log)
        verify_snp_chain(chain, trusted_roots=options.trusted_roots, now=options.now, log=log,
                         crls=crls_from_collateral(options.endorsements.collateral))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise log.fail("certificates", "attestation.malformed",
                       f"a certificate or CRL cannot be decoded: {exc}") from exc
    return chain
