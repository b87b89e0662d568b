"""AWS Nitro Enclaves (the registry's ``nitro`` platform): attestation documents, raw or in an
attested-TLS certificate.

The checks, in AWS's order ("Verifying the root of trust", Nitro Enclaves User Guide):

0. the document parses and every field is well formed (``abi``);
1. the certificate chain ``certificate -> cabundle[n-1] -> ... -> cabundle[0]`` is valid at
   ``options.now`` and ends at the AWS Nitro Enclaves root, pinned by the SHA-256 AWS publishes
   (leaf certificates live three hours, so the time matters);
2. the COSE_Sign1 signature (ES384) verifies with the leaf certificate's key;
3. in the attested-TLS form, ``user_data`` is the carrying certificate's SubjectPublicKeyInfo;
4. with an expected nonce, the document's ``nonce`` equals it.

PCR0 all zero means the enclave runs in debug mode (the console is attached and the
measurements are zeroed), which ``claims["debug"]`` states for the policy. ``user_data`` is
the field that carries the Medclave binding in an evidence bundle (``claims["report_data"]``).
"""

from __future__ import annotations

import hmac
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.attestation import cose
from medclave.attestation.core import (
    CheckLog,
    Claims,
    Verification,
    VerifyOptions,
    require_size,
    sha256_hex,
)
from medclave.attestation.nitro import abi
from medclave.attestation.x509chain import (
    clear_chain_cache,
    fingerprint,
    load_der_cached,
    verify_chain_cached,
)
from medclave.errors import AttestationError

PLATFORM = "nitro"
# The AWS Nitro Enclaves root ("aws.nitro-enclaves", P-384, 2019-10-28..2049-10-28): SHA-256 of
# its DER as AWS publishes it (Nitro Enclaves User Guide, "Verifying the root of trust").
AWS_NITRO_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
TRUSTED_ROOTS = frozenset({AWS_NITRO_ROOT_SHA256})

__all__ = ["AWS_NITRO_ROOT_SHA256", "PLATFORM", "clear_caches", "detect", "parse",
           "signed_bytes", "verify"]


def clear_caches() -> None:
    clear_chain_cache()


def detect(data: bytes) -> str | None:
    if abi.looks_like_document(data):
        return PLATFORM
    if abi.embedded_document(data) is not None:
        return PLATFORM
    return None


def _unwrap(data: bytes) -> tuple[bytes, abi.AttestedCertificate | None]:
    require_size(data, maximum=256 * 1024)
    if abi.looks_like_document(data):
        return data, None
    carrier = abi.embedded_document(data)
    if carrier is None:
        raise AttestationError("attestation.malformed",
                               "neither a Nitro attestation document nor a certificate carrying one")
    return carrier.document, carrier


def claims_of(doc: abi.Document, carrier: abi.AttestedCertificate | None = None) -> dict[str, Any]:
    pcr0 = doc.pcrs.get(0)
    claims: dict[str, Any] = {
        "module_id": doc.module_id,
        "digest": doc.digest,
        "timestamp": doc.timestamp_ms,
        "time": doc.timestamp.isoformat().replace("+00:00", "Z"),
        "pcrs": {str(i): v.hex() for i, v in doc.pcrs.items()},
        "public_key": None if doc.public_key is None else doc.public_key.hex(),
        "user_data": None if doc.user_data is None else doc.user_data.hex(),
        "nonce": None if doc.nonce is None else doc.nonce.hex(),
        # AWS: PCR0-2 read as zeros when the enclave was started in debug mode.
        "debug": pcr0 is None or not any(pcr0),
        # The field an evidence bundle's binding travels in (verifier.verify_bundle).
        "report_data": "" if doc.user_data is None else doc.user_data.hex(),
    }
    if carrier is not None:
        claims["tls_certificate"] = {
            "sha256": fingerprint(carrier.certificate),
            "spki_sha256": sha256_hex(carrier.spki),
            "subject": carrier.certificate.subject.rfc4514_string(),
        }
    return claims


def parse(data: bytes) -> Claims:
    raw, carrier = _unwrap(data)
    return claims_of(abi.parse_document(raw), carrier)


def signed_bytes(data: bytes) -> bytes:
    """The COSE Sig_structure over the protected header and the payload (RFC 9052 §4.4)."""
    raw, _ = _unwrap(data)
    return abi.parse_document(raw).sign1.to_be_signed()


def _chain(doc: abi.Document) -> list[x509.Certificate]:
    return [load_der_cached(der) for der in (doc.certificate, *reversed(doc.cabundle))]


def verify(data: bytes, options: VerifyOptions) -> Verification:
    log = CheckLog()
    try:
        raw, carrier = _unwrap(data)
        doc = abi.parse_document(raw)
        chain = _chain(doc)
    except AttestationError as exc:
        raise log.fail("0. parse document", exc.code, exc.detail) from exc
    log.ok("0. parse document", f"{doc.module_id}, {len(doc.pcrs)} PCRs, "
                                f"{len(doc.cabundle)} CA certificate(s)"
                                + (", carried in a TLS certificate" if carrier else ""))
    roots = options.trusted_roots if options.trusted_roots is not None else TRUSTED_ROOTS
    verify_chain_cached(chain, trusted_roots=roots, now=options.now, log=log,
                        name="1. certificate chain")
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not cose.signature_ok(
            doc.sign1, key, alg=cose.ES384):
        raise log.fail("2. document signature", "attestation.signature_invalid",
                       "the COSE_Sign1 signature does not verify with the leaf certificate (ES384)")
    log.ok("2. document signature", "COSE_Sign1 ES384 by the enclave's leaf certificate")
    if carrier is not None:
        cert = carrier.certificate
        if doc.user_data is None or not hmac.compare_digest(doc.user_data, carrier.spki):
            raise log.fail("3. TLS key binding", "attestation.binding_mismatch",
                           "user_data is not the carrying certificate's public key")
        if not cert.not_valid_before_utc <= options.now <= cert.not_valid_after_utc:
            raise log.fail("3. TLS key binding", "attestation.certificate_expired",
                           "the attested TLS certificate is not valid at the verification time")
        log.ok("3. TLS key binding", "user_data = SubjectPublicKeyInfo of the TLS certificate")
    if options.expected_nonce is not None:
        if doc.nonce is None or not hmac.compare_digest(doc.nonce, options.expected_nonce):
            raise log.fail("4. nonce", "attestation.nonce_mismatch",
                           "the document's nonce is not the expected nonce")
        log.ok("4. nonce", "nonce = expected nonce")
    return Verification(
        platform=PLATFORM,
        claims=claims_of(doc, carrier),
        checks=log.checks,
        tcb_status="unknown",
        secure=fingerprint(chain[-1]) in TRUSTED_ROOTS,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(doc.sign1.to_be_signed()),
    )
