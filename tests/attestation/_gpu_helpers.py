"""A test GPU: the real H100 evidence re-signed under a test device chain, for a chosen nonce.

NVIDIA's key is in the GPU, so the positive path of the GPU nonce binding (a nonce derived from a
report_data chosen at test time) can only be shown under a test root. The chain has the Hopper
shape (5 certificates, leaf first) and its leaf carries the real leaf's TCG DICE TcbInfo, so the
FWID check runs as on hardware; the root is passed via ``trusted_roots`` and the result is never
``secure`` (see tests/security/test_review_attestation.py for the same construction).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from medclave.attestation.nvidia import abi
from medclave.attestation.nvidia.verify import OID_TCG_DICE_TCBINFO
from medclave.attestation.x509chain import fingerprint
from medclave.protocol.evidence import GpuEvidence

NONCE_OFFSET = 4  # DSP0274 1.1 Table 40: SPDMVersion, code, Param1, Param2, then Nonce (32)
_NAMES = ("Test GSP FMC LF", "Test GSP BROM", "Test Provisioner ICA", "Test GH100 Identity",
          "Test Device Identity CA")


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
          extensions: tuple[x509.ExtensionType, ...] = ()) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2099, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass
class SignedGpu:
    """Signs SPDM evidence with the template's measurements and opaque data, for any nonce."""

    template: abi.AttestationReport
    keys: list[ec.EllipticCurvePrivateKey]
    chain: tuple[x509.Certificate, ...]
    signed: list[bytes] = field(default_factory=list)

    @classmethod
    def from_real(cls, report: bytes, real_leaf: x509.Certificate) -> SignedGpu:
        tcb_info = real_leaf.extensions.get_extension_for_oid(OID_TCG_DICE_TCBINFO).value
        keys = [ec.generate_private_key(ec.SECP384R1()) for _ in _NAMES]
        chain = []
        for i, name in enumerate(_NAMES):
            up = min(i + 1, len(_NAMES) - 1)
            chain.append(_cert(name, keys[i], _NAMES[up], keys[up], ca=i > 0,
                               extensions=(tcb_info,) if i == 0 else ()))
        return cls(template=abi.parse_report(report), keys=keys, chain=tuple(chain))

    @property
    def roots(self) -> frozenset[str]:
        return frozenset({fingerprint(self.chain[-1])})

    def chain_pem(self) -> list[str]:
        return [c.public_bytes(Encoding.PEM).decode() for c in self.chain]

    def evidence(self, nonce: bytes) -> bytes:
        """GET_MEASUREMENTS carrying ``nonce`` || the template's response, signed by the leaf."""
        assert len(nonce) == abi.NONCE_LENGTH
        old = self.template.signed
        signed = old[:NONCE_OFFSET] + nonce + old[NONCE_OFFSET + abi.NONCE_LENGTH:]
        # A fresh responder nonce, as a GPU draws for each MEASUREMENTS (DSP0274 1.1 Table 43):
        # two answers, from one GPU or two, are never the same signed bytes.
        opaque = sum(4 + len(v) for v in self.template.opaque.fields.values())
        at = len(signed) - 2 - opaque - abi.NONCE_LENGTH
        assert signed[at:at + abi.NONCE_LENGTH] == self.template.responder_nonce
        signed = signed[:at] + os.urandom(abi.NONCE_LENGTH) + signed[at + abi.NONCE_LENGTH:]
        r, s = decode_dss_signature(self.keys[0].sign(signed, ec.ECDSA(hashes.SHA384())))
        out = signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")
        self.signed.append(out)
        return out

    def entry(self, nonce: bytes, **kw: Any) -> GpuEvidence:
        return GpuEvidence(evidence=base64.b64encode(self.evidence(nonce)).decode(),
                           certificates=self.chain_pem(), **kw)


class FakeNvml:
    """pynvml as the attester calls it, answering with ``gpu``-signed evidence for each nonce."""

    class _Buffer:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

    def __init__(self, gpus: list[SignedGpu]) -> None:
        self.gpus = gpus
        self.nonces: list[bytes] = []
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        self.nonces.append(nonce)
        data = self.gpus[handle].evidence(nonce)
        return self._Buffer(attestationReport=data + bytes(64), attestationReportSize=len(data))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        chain = "".join(self.gpus[handle].chain_pem()).encode()
        return self._Buffer(attestationCertChain=chain + bytes(32),
                            attestationCertChainSize=len(chain))
