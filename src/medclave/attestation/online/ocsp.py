"""OCSP over HTTP for the NVIDIA chains: an :class:`~medclave.attestation.providers.OcspSource`.

Verification is offline by default (``options.online`` is None): nothing here is called and the
claims say ``revocation_checked: false``. A relying party that wants OCSP passes a provider
(:class:`medclave.attestation.online.OnlineEndorsements`, or :class:`HttpxOcspProvider` alone);
:class:`HttpxOcspProvider` asks NVIDIA's responder (the ``authorityInfoAccess`` of the GH100 and
RIM chains: ``http://ocsp.ndis.nvidia.com``) and :func:`verify_ocsp_response` checks what it
answers. Which links of a chain are asked is decided by the verifier
(:func:`medclave.attestation.providers.check_chain_online`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from medclave.attestation.providers import CertStatus
from medclave.errors import AttestationError

NVIDIA_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
MAX_OCSP_RESPONSE_BYTES = 64 * 1024
OCSP_NONCE_BYTES = 32


def _collateral(detail: str) -> AttestationError:
    return AttestationError("attestation.collateral_invalid", detail)


def _verify_signed_by(response: ocsp.OCSPResponse, key: object) -> None:
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                       algorithm)
        else:
            raise _collateral("OCSP response signed with an unsupported key type")
    except (InvalidSignature, UnsupportedAlgorithm, ValueError) as exc:
        raise _collateral("OCSP response signature does not verify") from exc


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime) -> object:
    """RFC 6960 §4.2.2.2: the issuer itself, or a responder it issued with id-kp-OCSPSigning."""
    delegated = [c for c in response.certificates if c != issuer]
    if not delegated:
        return issuer.public_key()
    responder = delegated[0]
    try:
        responder.verify_directly_issued_by(issuer)
        usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm,
            x509.ExtensionNotFound) as exc:
        raise _collateral(
            f"OCSP responder not authorised by the issuer: {exc or type(exc).__name__}"
        ) from exc
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
        raise _collateral("OCSP responder certificate lacks id-kp-OCSPSigning")
    if not responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
        raise _collateral("OCSP responder certificate is not valid at the verification time")
    return responder.public_key()


def _issuer_hashes(
    issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    name = hashes.Hash(algorithm)
    name.update(issuer.subject.public_bytes())
    key = hashes.Hash(algorithm)
    key.update(issuer.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    return name.finalize(), key.finalize()


def verify_ocsp_response(
    response: ocsp.OCSPResponse,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    now: datetime,
    nonce: bytes | None,
) -> CertStatus:
    """The status in ``response`` once it is shown to be about ``cert``, signed, current, fresh."""
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _collateral(f"OCSP response status {response.response_status.name}")
    if response.serial_number != cert.serial_number:
        raise _collateral("OCSP response is about another certificate")
    name_hash, _ = _issuer_hashes(issuer, response.hash_algorithm)
    if response.issuer_name_hash != name_hash:
        raise _collateral("OCSP response is about another issuer")
    _verify_signed_by(response, _signer(response, issuer, now))
    next_update = response.next_update_utc
    if response.this_update_utc > now or next_update is None or now > next_update:
        raise _collateral("OCSP response is not current at the verification time")
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound as exc:
            raise _collateral("OCSP response does not echo the request nonce") from exc
        if echoed != nonce:
            raise _collateral("OCSP response nonce differs from the request's")
    status = response.certificate_status
    if status == ocsp.OCSPCertStatus.GOOD:
        return "good"
    if status == ocsp.OCSPCertStatus.REVOKED:
        return "revoked"
    return "unknown"


class HttpxOcspProvider:
    """OCSP over HTTP POST (RFC 6960 Appendix A.1) with a caller-owned ``httpx.Client``.

    The client carries timeouts, proxies and transport; tests pass one on ``httpx.MockTransport``.
    """

    def __init__(
        self,
        client: httpx.Client,
        url: str = NVIDIA_OCSP_URL,
        *,
        nonce_source: Callable[[int], bytes] | None = os.urandom,
    ) -> None:
        self._client = client
        self._url = url
        self._nonce_source = nonce_source

    def certificate_status(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: datetime
    ) -> CertStatus:
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
        nonce = self._nonce_source(OCSP_NONCE_BYTES) if self._nonce_source else None
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        body = builder.build().public_bytes(serialization.Encoding.DER)
        try:
            reply = self._client.post(self._url, content=body,
                                      headers={"Content-Type": "application/ocsp-request"})
        except httpx.HTTPError as exc:
            raise AttestationError("attestation.provider_offline",
                                   f"OCSP responder unreachable: {exc}") from exc
        if reply.status_code != 200:
            raise AttestationError("attestation.provider_offline",
                                   f"OCSP responder answered HTTP {reply.status_code}")
        if len(reply.content) > MAX_OCSP_RESPONSE_BYTES:
            raise _collateral("OCSP response too large")
        try:
            response = ocsp.load_der_ocsp_response(reply.content)
        except ValueError as exc:
            raise _collateral(f"OCSP response does not parse: {exc}") from exc
        try:
            return verify_ocsp_response(response, cert, issuer, now=now, nonce=nonce)
        except (ValueError, UnsupportedAlgorithm) as exc:  # fields absent or undecodable
            raise _collateral(f"OCSP response malformed: {exc}") from exc
