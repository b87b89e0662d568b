"""Certificate loading and chain verification shared by every platform.

The web-PKI verifier in ``cryptography`` insists on server/client profiles (SANs, EKUs) that the
hardware vendors' chains do not follow (AMD signs with RSASSA-PSS, NVIDIA's device chains carry
no SAN), so the chain walk is done here: names, validity at the injected time, each signature
against its issuer, the root pinned by SHA-256 fingerprint, and CRLs when given.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.hashes import SHA256

from medclave.attestation.cache import VerdictCache
from medclave.attestation.core import CheckLog
from medclave.errors import AttestationError
from medclave.util.lru import Lru

MAX_CERT_FILE_BYTES = 256 * 1024
# What ``cryptography`` raises for undecodable X.509 beyond ValueError: a version other than
# v1/v3, a repeated extension, a general name of an unsupported type.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
MAX_CHAIN_LENGTH = 8


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lower hex: how trust anchors are pinned."""
    return cert.fingerprint(SHA256()).hex()


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """One or more certificates from PEM (any number) or a single DER certificate."""
    if len(data) > MAX_CERT_FILE_BYTES:
        raise AttestationError("attestation.malformed", "certificate file too large")
    # Some vendor certificates (AMD VCEKs) carry a non-positive serial; tolerated, not trusted.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                certs = list(x509.load_pem_x509_certificates(data))
            else:
                certs = [x509.load_der_x509_certificate(data)]
            for cert in certs:
                _decode_fully(cert)
        except DECODE_ERRORS as exc:
            raise AttestationError("attestation.malformed", f"not a certificate: {exc}") from exc
        return certs


def _decode_fully(cert: x509.Certificate) -> None:
    """``cryptography`` decodes names and extensions lazily; a corrupt one would otherwise fail
    later, inside error handling. Touch them now so a bad certificate fails at load time."""
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    _ = cert.extensions
    _ = cert.not_valid_before_utc, cert.not_valid_after_utc


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if b"-----BEGIN X509 CRL-----" in data:
                crl = x509.load_pem_x509_crl(data)
            else:
                crl = x509.load_der_x509_crl(data)
            # Decoded lazily, like certificates: fail here rather than mid-verification.
            crl.issuer.rfc4514_string()
            _ = crl.extensions, crl.last_update_utc, crl.next_update_utc
            for revoked in crl:
                _ = revoked.extensions
            return crl
        except DECODE_ERRORS as exc:
            raise AttestationError("attestation.malformed", f"not a CRL: {exc}") from exc


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def verify_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    *,
    now: datetime,
    log: CheckLog,
    name: str,
) -> None:
    """CRL signed by ``issuer`` and current at ``now`` (RFC 5280 §6.3.3 (a), (f), (g))."""
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise log.fail(name, "attestation.collateral_invalid",
                       f"CRL not signed by {issuer.subject.rfc4514_string()}")
    next_update = crl.next_update_utc
    if crl.last_update_utc > now or (next_update is not None and now > next_update):
        raise log.fail(name, "attestation.collateral_invalid", "CRL is not current at the verification time")
    log.ok(name, f"signed by {issuer.subject.rfc4514_string()}, current")


def _not_a_ca(cert: x509.Certificate, below: int) -> str | None:
    """Why ``cert`` may not issue the certificate under it, with ``below`` CA certificates between
    it and the leaf; None when it may. RFC 5280 §6.1.4 (k), (l), (n): basicConstraints cA, the
    path length, and keyCertSign when keyUsage is present. Without this, whoever holds any leaf
    key (a PCK, a device key) could mint certificates that chain to the pinned root."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "issues certificates but has no basicConstraints (not a CA)"
    except ValueError as exc:
        return f"has undecodable extensions: {exc}"
    if not constraints.ca:
        return "issues certificates but is not a CA"
    if constraints.path_length is not None and below > constraints.path_length:
        return f"path length {constraints.path_length} exceeded ({below} CA(s) below it)"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if not usage.key_cert_sign:
        return "issues certificates but its keyUsage lacks keyCertSign"
    return None


def verify_chain(
    chain: Sequence[x509.Certificate],
    *,
    trusted_roots: Iterable[str],
    now: datetime,
    log: CheckLog,
    name: str = "certificate chain",
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> None:
    """Verify ``chain`` ordered leaf first, root last; the root must be pinned and self-signed,
    and every certificate above the leaf a CA allowed to issue at its depth.

    Each CRL whose issuer is in the chain is verified and applied to the certificates that
    issuer signed. Raises :class:`AttestationError` through ``log`` on the first failure.
    """
    roots = frozenset(trusted_roots)
    if not chain:
        raise log.fail(name, "attestation.certificate_missing", "empty certificate chain")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise log.fail(name, "attestation.chain_invalid", "certificate chain too long")
    root = chain[-1]
    if fingerprint(root) not in roots:
        raise log.fail(
            name, "attestation.root_untrusted",
            f"root {root.subject.rfc4514_string()} ({fingerprint(root)[:16]}…) is not pinned",
        )
    for cert in chain:
        if not _valid_at(cert, now):
            raise log.fail(
                name, "attestation.certificate_expired",
                f"{cert.subject.rfc4514_string()} valid {cert.not_valid_before_utc:%Y-%m-%d}"
                f"…{cert.not_valid_after_utc:%Y-%m-%d}, not at {now:%Y-%m-%d}",
            )
    links = [*itertools.pairwise(chain), (root, root)]
    for child, issuer in links:
        try:
            if child.issuer != issuer.subject:
                raise ValueError("issuer name differs")
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise log.fail(
                name, "attestation.chain_invalid",
                f"{child.subject.rfc4514_string()} not issued by {issuer.subject.rfc4514_string()}: "
                f"{exc or type(exc).__name__}",
            ) from exc
    for below, issuer in enumerate(chain[1:]):
        problem = _not_a_ca(issuer, below)
        if problem is not None:
            raise log.fail(name, "attestation.chain_invalid",
                           f"{issuer.subject.rfc4514_string()} {problem}")
    by_subject = {c.subject: c for c in chain}
    for crl in crls:
        issuer_cert = by_subject.get(crl.issuer)
        if issuer_cert is None:
            continue
        verify_crl(crl, issuer_cert, now=now, log=log, name=f"CRL {crl.issuer.rfc4514_string()}")
        for cert in chain[:-1]:
            if cert.issuer == crl.issuer and crl.get_revoked_certificate_by_serial_number(
                cert.serial_number
            ) is not None:
                raise log.fail(
                    name, "attestation.certificate_revoked",
                    f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x}) is revoked",
                )
    log.ok(name, " -> ".join(c.subject.rfc4514_string() for c in chain))


# --- memoised chains (no CRLs): Nitro, GCE vTPM ------------------------------------------------

_PARSED: Lru[str, x509.Certificate] = Lru(512)
_CHAIN_VERDICTS: VerdictCache[tuple[str, ...], bool] = VerdictCache(256)


def clear_chain_cache() -> None:
    """Forget parsed certificates and chain verdicts (benchmarks time the cold path with it)."""
    _PARSED.clear()
    _CHAIN_VERDICTS.clear()


def load_der_cached(der: bytes) -> x509.Certificate:
    """One DER certificate, parsed and fully decoded once per distinct encoding."""
    key = hashlib.sha256(der).hexdigest()
    cert = _PARSED.get(key)
    if cert is None:
        certs = load_certificates(der)
        if len(certs) != 1 or b"-----BEGIN" in der:
            raise AttestationError("attestation.malformed", "expected one DER certificate")
        cert = certs[0]
        _PARSED.put(key, cert)
    return cert


def verify_chain_cached(
    chain: Sequence[x509.Certificate],
    *,
    trusted_roots: Iterable[str],
    now: datetime,
    log: CheckLog,
    name: str = "certificate chain",
) -> None:
    """:func:`verify_chain` without CRLs, its verdict kept for the chain's validity window (the
    intersection of its certificates' periods, see :mod:`.cache`): a hit at a ``now`` inside the
    window decides as the full walk would, since nothing else it checks depends on the time."""
    roots = frozenset(trusted_roots)
    key = (*(fingerprint(c) for c in chain), "|", *sorted(roots))
    if _CHAIN_VERDICTS.get(key, now):
        log.ok(name, " -> ".join(c.subject.rfc4514_string() for c in chain) + " (cached verdict)")
        return
    verify_chain(chain, trusted_roots=roots, now=now, log=log, name=name)
    _CHAIN_VERDICTS.put(key, True, valid_from=max(c.not_valid_before_utc for c in chain),
                        valid_until=min(c.not_valid_after_utc for c in chain))
