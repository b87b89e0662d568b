"""DCAP collateral (SGX and TDX) as it arrives: raw blobs classified into PCS documents, CRLs and chains.

Every blob arrives as raw bytes in ``Endorsements.collateral``; each is classified by content:
Intel PCS tcbInfo / enclaveIdentity responses (parsed in ``pcs``), CRLs in DER or PEM, PEM
issuer chains, and the dcap-qvl ``QuoteCollateralV3`` bundle, which carries the signed PCS
documents as exact strings (``tcb_info``, ``qe_identity``) with hex r||s signatures, hex DER
CRLs (``pck_crl``, ``root_ca_crl``) and PEM issuer chains. Blobs that are not TDX collateral are
counted and ignored (a bundle may serve several platforms); a blob that claims to be TDX
collateral but is malformed is refused. Parse results are memoised by SHA-256 of the blob.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from medclave.attestation import x509chain
from medclave.attestation.dcap.pcs import (
    MAX_COLLATERAL_BYTES,
    EnclaveIdentity,
    TcbInfo,
    invalid,
    parse_enclave_identity,
    parse_tcb_info,
    top_level_members,
)
from medclave.errors import AttestationError
from medclave.util.lru import Lru

MAX_COLLATERAL_ITEMS = 32
SIGNATURE_SIZE = 64


# --- certificates and CRLs, fully decoded up front -------------------------------------------


def load_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """Certificates whose every field used later decodes: ``cryptography`` parses lazily, so
    a corrupt name would otherwise surface as a ValueError in the middle of a chain check."""
    certs = tuple(x509chain.load_certificates(data))
    for cert in certs:
        check_certificate(cert)
    return certs


def check_certificate(cert: x509.Certificate) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-positive serials: tolerated as x509chain does
            _decode_all(cert)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise AttestationError("attestation.malformed", f"undecodable certificate: {exc}") from exc


def _decode_all(cert: x509.Certificate) -> None:
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
    _ = (cert.signature_hash_algorithm, cert.tbs_certificate_bytes)
    cert.public_key()


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    crl = x509chain.load_crl(data)
    try:
        crl.issuer.rfc4514_string()
        _ = (crl.last_update_utc, crl.next_update_utc, crl.signature_hash_algorithm)
        for entry in crl:
            _ = entry.serial_number
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise AttestationError("attestation.malformed", f"undecodable CRL: {exc}") from exc
    return crl


# --- signed documents and the collateral set --------------------------------------------------

T = TypeVar("T", TcbInfo, EnclaveIdentity)


@dataclass(frozen=True)
class SignedDocument(Generic[T]):
    """A PCS document: its parsed content, the exact signed bytes and the raw r||s signature."""

    kind: str  # "tcbInfo" or "enclaveIdentity"
    content: T
    body: bytes
    signature: bytes


@dataclass(frozen=True)
class CollateralSet:
    tcb_info: SignedDocument[TcbInfo] | None = None
    qe_identity: SignedDocument[EnclaveIdentity] | None = None
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    certificates: tuple[x509.Certificate, ...] = ()
    ignored: int = 0

    @property
    def empty(self) -> bool:
        return self.tcb_info is None and self.qe_identity is None and not self.crls


def _signature_hex(text: Any, where: str) -> bytes:
    if type(text) is not str:
        raise invalid(f"{where}: signature missing")
    try:
        sig = bytes.fromhex(text)
    except ValueError as exc:
        raise invalid(f"{where}: signature is not hex") from exc
    if len(sig) != SIGNATURE_SIZE:
        raise invalid(f"{where}: signature is {len(sig)} bytes, expected {SIGNATURE_SIZE} (r||s)")
    return sig


def _tcb_doc(body: bytes, value: Any, sig: Any) -> SignedDocument[TcbInfo]:
    return SignedDocument("tcbInfo", parse_tcb_info(value), body, _signature_hex(sig, "tcbInfo"))


def _qe_doc(body: bytes, value: Any, sig: Any) -> SignedDocument[EnclaveIdentity]:
    return SignedDocument(
        "enclaveIdentity",
        parse_enclave_identity(value),
        body,
        _signature_hex(sig, "enclaveIdentity"),
    )


@dataclass(frozen=True)
class _Item:
    """One classified collateral blob (what is cached per blob digest)."""

    tcb_info: SignedDocument[TcbInfo] | None = None
    qe_identity: SignedDocument[EnclaveIdentity] | None = None
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    certificates: tuple[x509.Certificate, ...] = ()
    ignored: bool = False


def _hex_crl(value: Any, where: str) -> x509.CertificateRevocationList:
    if type(value) is not str:
        raise invalid(f"collateral bundle: {where} is not a hex string")
    try:
        der = bytes.fromhex(value)
    except ValueError as exc:
        raise invalid(f"collateral bundle: {where} is not hex") from exc
    return load_crl(der)


def _pem_chain(value: Any, where: str) -> tuple[x509.Certificate, ...]:
    if value is None:
        return ()
    if type(value) is not str:
        raise invalid(f"collateral bundle: {where} is not a PEM string")
    return load_certificates(value.encode("ascii", "replace"))


def _bundle(members: Mapping[str, tuple[Any, bytes]]) -> _Item:
    """The dcap-qvl QuoteCollateralV3 JSON: signed documents are carried as exact strings."""
    value = {k: v for k, (v, _raw) in members.items()}
    tcb_text, qe_text = value.get("tcb_info"), value.get("qe_identity")
    if type(tcb_text) is not str or (qe_text is not None and type(qe_text) is not str):
        raise invalid("collateral bundle: tcb_info / qe_identity must be JSON strings")
    tcb_body = tcb_text.encode("utf-8")
    tcb = _tcb_doc(tcb_body, _loads(tcb_body), value.get("tcb_info_signature"))
    qe = None
    if qe_text is not None:
        qe_body = qe_text.encode("utf-8")
        qe = _qe_doc(qe_body, _loads(qe_body), value.get("qe_identity_signature"))
    crls = tuple(
        _hex_crl(value[key], key)
        for key in ("pck_crl", "root_ca_crl")
        if value.get(key) is not None
    )
    certs = (
        _pem_chain(value.get("tcb_info_issuer_chain"), "tcb_info_issuer_chain")
        + _pem_chain(value.get("qe_identity_issuer_chain"), "qe_identity_issuer_chain")
        + _pem_chain(value.get("pck_crl_issuer_chain"), "pck_crl_issuer_chain")
    )
    return _Item(tcb_info=tcb, qe_identity=qe, crls=crls, certificates=certs)


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"collateral JSON: {type(exc).__name__}") from exc


def classify(blob: bytes) -> _Item:
    """Recognise one collateral blob by its content."""
    if len(blob) > MAX_COLLATERAL_BYTES:
        raise invalid(f"collateral item is {len(blob)} bytes, over {MAX_COLLATERAL_BYTES}")
    head = blob.lstrip()[:1]
    if head == b"{":
        members = top_level_members(blob)
        if "tcbInfo" in members:
            value, body = members["tcbInfo"]
            return _Item(tcb_info=_tcb_doc(body, value, members.get("signature", (None,))[0]))
        if "enclaveIdentity" in members:
            value, body = members["enclaveIdentity"]
            return _Item(qe_identity=_qe_doc(body, value, members.get("signature", (None,))[0]))
        if "tcb_info" in members:
            return _bundle(members)
        return _Item(ignored=True)
    if b"-----BEGIN X509 CRL-----" in blob:
        return _Item(crls=(load_crl(blob),))
    if b"-----BEGIN CERTIFICATE-----" in blob:
        return _Item(certificates=load_certificates(blob))
    if head == b"\x30":
        try:
            return _Item(crls=(load_crl(blob),))
        except AttestationError:
            pass
        try:
            return _Item(certificates=load_certificates(blob))
        except AttestationError:
            return _Item(ignored=True)
    return _Item(ignored=True)


_CACHE: Lru[str, _Item] = Lru(256)


def clear_cache() -> None:
    _CACHE.clear()


def gather(blobs: Iterable[bytes]) -> CollateralSet:
    """Classify every blob (cached by SHA-256) into one collateral set.

    At most one tcbInfo and one QE identity: two would leave open which one was appraised.
    """
    items: list[_Item] = []
    for n, blob in enumerate(blobs):
        if n >= MAX_COLLATERAL_ITEMS:
            raise invalid(f"more than {MAX_COLLATERAL_ITEMS} collateral items")
        key = hashlib.sha256(blob).hexdigest()
        item = _CACHE.get(key)
        if item is None:
            item = classify(blob)
            _CACHE.put(key, item)
        items.append(item)
    tcbs = [i.tcb_info for i in items if i.tcb_info is not None]
    qes = [i.qe_identity for i in items if i.qe_identity is not None]
    if len(tcbs) > 1 or len(qes) > 1:
        raise invalid("more than one tcbInfo or QE identity supplied; supply one of each")
    return CollateralSet(
        tcb_info=tcbs[0] if tcbs else None,
        qe_identity=qes[0] if qes else None,
        crls=tuple(c for i in items for c in i.crls),
        certificates=tuple(c for i in items for c in i.certificates),
        ignored=sum(1 for i in items if i.ignored),
    )
