"""AWS Nitro Enclaves attestation documents, bytes to structure (no cryptography).

AWS "Nitro Enclaves User Guide", "Verifying the root of trust" (and the NSM API's
``AttestationDoc``): the document is a COSE_Sign1 (untagged or tag 18) whose protected header
is ``{1: -35}`` (ES384) and whose payload is a CBOR map with ``module_id`` (text), ``digest``
("SHA384"), ``timestamp`` (ms since the epoch), ``pcrs`` (index 0..31 -> 32/48/64 bytes),
``certificate`` (DER), ``cabundle`` (DER certificates, the root first), and optional
``public_key`` (1..1024 bytes), ``user_data`` and ``nonce`` (0..512 bytes each). Every field's
type and size is checked as AWS's "syntactical validation" asks.

The attested-TLS form (Evervault cages) carries the document hex-encoded as the first label of
a dNSName in a certificate's subjectAltName; the document's ``user_data`` is the certificate's
SubjectPublicKeyInfo, which binds the TLS key to the enclave.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from medclave.attestation import cose
from medclave.attestation.x509chain import DECODE_ERRORS, load_certificates
from medclave.errors import AttestationError

MAX_DOC_BYTES = 16 * 1024
MAX_CABUNDLE = 8
MAX_CERT_DER = 4096
PCR_SIZES = (32, 48, 64)
_PREFIXES = (bytes.fromhex("8444a1013822"), bytes.fromhex("d28444a1013822"))
_SAN_ERRORS: tuple[type[Exception], ...] = (x509.ExtensionNotFound, UnsupportedAlgorithm,
                                            *DECODE_ERRORS)
_HEX_LABEL = re.compile(r"(?:[0-9a-f]{2}){16,}\Z")


def _bad(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", f"Nitro attestation document: {detail}")


@dataclass(frozen=True)
class Document:
    sign1: cose.Sign1
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)


def looks_like_document(data: bytes) -> bool:
    return data.startswith(_PREFIXES) and len(data) <= MAX_DOC_BYTES


def _opt(payload: dict[object, object], key: str, low: int, high: int) -> bytes | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise _bad(f"{key} is not a {low}..{high}-byte string")
    return value


def parse_document(data: bytes) -> Document:
    """Parse and syntactically validate a document; nothing is verified."""
    if len(data) > MAX_DOC_BYTES:
        raise _bad(f"{len(data)} bytes, over {MAX_DOC_BYTES}")
    msg = cose.decode_sign1(data, what="Nitro attestation document", maximum=MAX_DOC_BYTES)
    if msg.protected_map != {cose.HEADER_ALG: cose.ES384}:
        raise _bad("the protected header is not {1: -35} (ES384)")
    payload = cose.loads(msg.payload, what="Nitro document payload", maximum=MAX_DOC_BYTES)
    if not isinstance(payload, dict):
        raise _bad("the payload is not a map")
    module_id = payload.get("module_id")
    if not isinstance(module_id, str) or not 1 <= len(module_id) <= 256:
        raise _bad("module_id is not a non-empty string")
    if payload.get("digest") != "SHA384":
        raise _bad("digest is not SHA384")
    timestamp = payload.get("timestamp")
    if type(timestamp) is not int or not 0 < timestamp < 1 << 48:
        raise _bad("timestamp is not a positive integer of milliseconds")
    pcrs = payload.get("pcrs")
    if not isinstance(pcrs, dict) or not 1 <= len(pcrs) <= 32:
        raise _bad("pcrs is not a map of 1..32 entries")
    out_pcrs: dict[int, bytes] = {}
    for index, value in pcrs.items():
        if type(index) is not int or not 0 <= index < 32:
            raise _bad("a PCR index is not 0..31")
        if not isinstance(value, bytes) or len(value) not in PCR_SIZES:
            raise _bad(f"PCR{index} is not 32, 48 or 64 bytes")
        out_pcrs[index] = value
    certificate = payload.get("certificate")
    if not isinstance(certificate, bytes) or not 1 <= len(certificate) <= MAX_CERT_DER:
        raise _bad("certificate is not a 1..4096-byte DER string")
    cabundle = payload.get("cabundle")
    if (not isinstance(cabundle, list) or not 1 <= len(cabundle) <= MAX_CABUNDLE
            or not all(isinstance(c, bytes) and 1 <= len(c) <= MAX_CERT_DER for c in cabundle)):
        raise _bad(f"cabundle is not a list of 1..{MAX_CABUNDLE} DER certificates")
    return Document(
        sign1=msg,
        module_id=module_id,
        digest="SHA384",
        timestamp_ms=timestamp,
        pcrs=dict(sorted(out_pcrs.items())),
        certificate=certificate,
        cabundle=tuple(cabundle),
        public_key=_opt(payload, "public_key", 1, 1024),
        user_data=_opt(payload, "user_data", 0, 512),
        nonce=_opt(payload, "nonce", 0, 512),
    )


# --- the attested-TLS form -------------------------------------------------------------------


@dataclass(frozen=True)
class AttestedCertificate:
    certificate: x509.Certificate
    document: bytes  # the embedded COSE document
    spki: bytes  # the certificate's SubjectPublicKeyInfo, DER


def embedded_document(data: bytes) -> AttestedCertificate | None:
    """The Nitro document carried in the SAN of the (first) certificate of ``data``, or None
    when there is none. Never raises for data that is not such a certificate."""
    head = data.lstrip()[:1]
    if head != b"-" and head != b"\x30":
        return None
    try:
        certs = load_certificates(data)
    except AttestationError:
        return None
    if not 1 <= len(certs) <= 4:
        return None
    cert = certs[0]  # a PEM file may add the issuer after the leaf
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    except _SAN_ERRORS:
        return None
    for name in names:
        label = name.split(".", 1)[0].lower()
        if len(label) <= 2 * MAX_DOC_BYTES and _HEX_LABEL.match(label):
            doc = bytes.fromhex(label)
            if looks_like_document(doc):
                return AttestedCertificate(cert, doc, spki)
    return None
