"""The mesh CA's X.509: issuing workload certificates, requests, reading a peer's certificate.

Everything X.509 is done by ``cryptography``; by hand only the one thing it does not encode:
the DER of our private extension's value (a UTF8String, X.690 §8.23, with a definite length,
§8.1.3), about twenty lines with its bounded parser.

A workload certificate (ECDSA P-256, the CA's signature ECDSA-with-SHA256):

* subject ``CN=<identity>``, subjectAltName the identity URI only (``policy.WorkloadId``);
* basicConstraints CA:false, keyUsage digitalSignature, extendedKeyUsage serverAuth and
  clientAuth: one certificate serves both ends of the workload's connections;
* lifetime short (the broker's ``mesh_cert_seconds``, default one hour);
* the **attested identities** extension (OID :data:`CLAIMS_OID`, not critical): the revocable
  identities of the evidence it was issued on (measurement, chip id, TCB, GPU serials;
  ``kbs.revocation.identities``) as canonical JSON, so a peer can refuse the certificate at the
  next handshake once the tenant revokes any of them, without asking the CA about serials.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medclave.crypto.canonical import canonical_json
from medclave.errors import InputError, MeshError
from medclave.mesh.policy import WorkloadId
from medclave.util.files import create_file, create_secret_file, read_secret_file

# A UUID-derived OID (ITU-T X.667, arc 2.25): needs no registration and collides with nobody's.
CLAIMS_OID: Final = x509.ObjectIdentifier("2.25.299458414415447538351213319013749836735")
MAX_CSR_BYTES: Final = 8 * 1024
MAX_CLAIMS_BYTES: Final = 16 * 1024
CA_LIFETIME: Final = timedelta(days=3650)
BACKDATE: Final = timedelta(minutes=1)  # tolerate small clock differences between peers


def spki_sha256(key: ec.EllipticCurvePublicKey) -> str:
    """What the evidence binds (runtime ``tls_key``): SHA-256 of the DER SubjectPublicKeyInfo."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


# --- the claims extension's DER (X.690 UTF8String, tag 12) ------------------------------------

def encode_utf8string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > MAX_CLAIMS_BYTES:
        raise MeshError("mesh.csr_invalid", "attested identities too large")
    if len(data) < 0x80:
        return bytes([0x0C, len(data)]) + data
    size = len(data).to_bytes((len(data).bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(size)]) + size + data


def decode_utf8string(der: bytes) -> str:
    """The inverse of :func:`encode_utf8string`, strict DER (minimal length), bounded."""
    bad = MeshError("mesh.peer_unauthenticated", "attested identities extension malformed")
    if len(der) < 2 or der[0] != 0x0C or len(der) > MAX_CLAIMS_BYTES + 4:
        raise bad
    first, pos = der[1], 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count not in (1, 2) or len(der) < 2 + count:
            raise bad
        length = int.from_bytes(der[2:2 + count], "big")
        pos = 2 + count
        if length < 0x80 or (count == 2 and length < 0x100):  # not minimal: not DER
            raise bad
    if len(der) != pos + length:
        raise bad
    try:
        return der[pos:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad from exc


def claims_extension(claims: Mapping[str, Collection[str]]) -> x509.UnrecognizedExtension:
    body = canonical_json({k: sorted(set(v)) for k, v in sorted(claims.items()) if v})
    return x509.UnrecognizedExtension(CLAIMS_OID, encode_utf8string(body.decode()))


def _claims_of(cert: x509.Certificate) -> dict[str, frozenset[str]]:
    try:
        ext = cert.extensions.get_extension_for_oid(CLAIMS_OID).value
    except x509.ExtensionNotFound:
        return {}
    assert isinstance(ext, x509.UnrecognizedExtension)
    try:
        doc = json.loads(decode_utf8string(ext.value))
    except (ValueError, RecursionError) as exc:  # bounded size, but nesting is not
        raise MeshError("mesh.peer_unauthenticated", "attested identities not JSON") from exc
    if not isinstance(doc, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in doc.values()):
        raise MeshError("mesh.peer_unauthenticated", "attested identities malformed")
    return {str(k): frozenset(v) for k, v in doc.items()}


# --- the CA ---------------------------------------------------------------------------------

class MeshCA:
    """The mesh's certificate authority: a P-256 key and its self-signed certificate."""

    KEY_FILE: Final = "mesh-ca.key"
    CERT_FILE: Final = "mesh-ca.pem"

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        if certificate.public_key() != key.public_key():
            raise InputError("config.invalid", "the mesh CA certificate is not the key's")
        self._key = key
        self.certificate = certificate

    @classmethod
    def generate(cls, trust_domain: str, *, now: datetime) -> MeshCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                             f"Medclave mesh CA {trust_domain}")])
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE).not_valid_after(now + CA_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, directory: Path, trust_domain: str, *, now: datetime) -> MeshCA:
        """``mesh-ca.key`` (0600) and ``mesh-ca.pem`` in ``directory``, made on first use."""
        key_path, cert_path = directory / cls.KEY_FILE, directory / cls.CERT_FILE
        if not key_path.exists():
            ca = cls.generate(trust_domain, now=now)
            directory.mkdir(parents=True, exist_ok=True)
            create_secret_file(key_path, ca._key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            create_file(cert_path, ca.pem)
            return ca
        key = serialization.load_pem_private_key(
            read_secret_file(key_path, "mesh CA key", max_bytes=4096), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError("config.invalid", "the mesh CA key is not an EC key")
        return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, identity: WorkloadId, public_key: ec.EllipticCurvePublicKey, *,
              claims: Mapping[str, Collection[str]], now: datetime,
              lifetime: timedelta, hosts: Sequence[str] = ()) -> x509.Certificate:
        """A workload certificate (module docstring), valid from now for ``lifetime``.

        ``hosts`` (DNS names or IP addresses, as subjectAltNames beside the URI) only for a
        database's server certificate, which libpq's ``sslmode=verify-full`` matches against
        the host it dialled (docs/continuous-trust.md); the CA's attested issuance never sets
        them, so no workload certificate can pass for a database host."""
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            identity.uri[:64])]))
                .issuer_name(self.certificate.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE).not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName(names), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key()), critical=False)
                .add_extension(claims_extension(claims), critical=False)
                .sign(self._key, hashes.SHA256()))


# --- the workload's side ------------------------------------------------------------------

def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, identity: WorkloadId) -> bytes:
    """A PKCS#10 request (PEM) for ``identity``, signed by ``key`` (proof of possession)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.uri[:64])]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(identity.uri)]), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def read_csr(pem: str) -> tuple[WorkloadId, ec.EllipticCurvePublicKey]:
    """The identity and P-256 key of a request whose self-signature verifies; else
    ``mesh.csr_invalid`` (or ``mesh.identity_invalid``)."""
    if not isinstance(pem, str) or len(pem) > MAX_CSR_BYTES:
        raise MeshError("mesh.csr_invalid", "not a PEM certificate request within bounds")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
        signed = csr.is_signature_valid
        key = csr.public_key()
        uris = csr.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        # (UnsupportedAlgorithm: a key or signature of an unknown kind; InvalidVersion: a
        # version field other than v1; both found by fuzzing)
        raise MeshError("mesh.csr_invalid", f"certificate request unreadable: {exc}") from exc
    if not signed:
        raise MeshError("mesh.csr_invalid", "the request's signature does not verify")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise MeshError("mesh.csr_invalid", "the request's key is not P-256")
    if len(uris) != 1:
        raise MeshError("mesh.csr_invalid", "the request names exactly one identity URI")
    return WorkloadId.parse(uris[0]), key


@dataclass(frozen=True)
class PeerCert:
    """What a service reads from a peer's certificate (already chain-verified by TLS)."""

    identity: WorkloadId
    serial: int
    not_after: datetime
    claims: Mapping[str, frozenset[str]]

    @classmethod
    def from_der(cls, der: bytes) -> PeerCert:
        try:
            cert = x509.load_der_x509_certificate(der)
            uris = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(
                    x509.UniformResourceIdentifier)
        except (ValueError, x509.ExtensionNotFound, x509.InvalidVersion,
                UnsupportedAlgorithm) as exc:
            raise MeshError("mesh.peer_unauthenticated", "no workload identity in the peer "
                                                         "certificate") from exc
        if len(uris) != 1:
            raise MeshError("mesh.peer_unauthenticated", "the peer certificate names "
                                                         f"{len(uris)} identities")
        return cls(WorkloadId.parse(uris[0]), cert.serial_number, cert.not_valid_after_utc,
                   _claims_of(cert))
