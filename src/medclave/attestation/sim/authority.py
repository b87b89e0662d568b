"""The sim root: a local stand-in for AMD's ARK -> ASK -> VCEK, kept in a data folder.

Sim evidence is an SNP-layout report signed by a sim "VCEK" whose certificate carries the same
TCB and hwID extensions AMD's do, so the SEV-SNP verifier checks it with the same code. It
protects nothing: whoever holds the data folder can sign anything. Every relying party refuses it
unless its policy names ``sim`` and it was given this root's fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medclave.attestation.sevsnp.certs import (
    OID_BL_SPL,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_STRUCT_VERSION,
    OID_TEE_SPL,
    OID_UCODE_SPL,
)
from medclave.attestation.x509chain import fingerprint
from medclave.errors import InputError
from medclave.util.files import write_secret_file

SIM_LABEL = "SIMULATED TEE - NOT SECURE"
# family_id of every sim report: how detection tells sim from real SNP evidence.
SIM_FAMILY_ID = b"MEDCLAVE-SIM\x00\x00\x00\x00"
SIM_CHIP_ID = hashlib.sha512(b"medclave sim chip").digest()
# The TCB the sim "firmware" reports (Milan layout): bootloader, tee, snp, microcode.
SIM_TCB = {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}

# The sim VCEK carries AMD's own KDS extensions (spec 57230, Table 8), named where the SNP
# verifier reads them.
_TCB_OIDS = {"bl": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL, "ucode": OID_UCODE_SPL}
_FILES = ("ark.pem", "ask.pem", "vcek.pem", "vcek.key")


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Medclave sim (NOT SECURE)"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _cert(
    subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey,
    *, ca: bool, now: datetime, extensions: tuple[x509.UnrecognizedExtension, ...] = (),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA384())


@dataclass(frozen=True)
class SimAuthority:
    """The sim ARK/ASK certificates and the VCEK key that signs sim reports."""

    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.ark)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """VCEK, ASK, ARK: leaf first."""
        return (self.vcek, self.ask, self.ark)

    def chain_pem(self) -> list[str]:
        return [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain]

    @classmethod
    def create(cls, *, now: datetime | None = None) -> SimAuthority:
        when = now or datetime.now(UTC)
        ark_key = ec.generate_private_key(ec.SECP384R1())
        ask_key = ec.generate_private_key(ec.SECP384R1())
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark = _cert("SIM-ARK", "SIM-ARK", ark_key, ark_key.public_key(), ca=True, now=when)
        ask = _cert("SIM-ASK", "SIM-ARK", ark_key, ask_key.public_key(), ca=True, now=when)
        exts = (
            *(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), _der_int(SIM_TCB[part]))
              for part, oid in _TCB_OIDS.items()),
            x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_STRUCT_VERSION), _der_int(0)),
            x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_HWID), SIM_CHIP_ID),
            x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_PRODUCT_NAME), b"\x16\x08Milan-B0"),
        )
        vcek = _cert("SEV-VCEK", "SIM-ASK", ask_key, vcek_key.public_key(), ca=False, now=when,
                     extensions=exts)
        return cls(ark=ark, ask=ask, vcek=vcek, vcek_key=vcek_key)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SimAuthority:
        """The authority kept in ``data_dir/sim`` (created 0700, key 0600 on first use)."""
        folder = data_dir / "sim"
        if all((folder / f).exists() for f in _FILES):
            return cls.load(folder)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        authority = cls.create()
        authority._save(folder)
        return authority

    @classmethod
    def load(cls, folder: Path) -> SimAuthority:
        try:
            certs = [x509.load_pem_x509_certificate((folder / f).read_bytes()) for f in _FILES[:3]]
            key = serialization.load_pem_private_key((folder / "vcek.key").read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise InputError("config.invalid", f"sim authority in {folder.name}/ unreadable: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError("config.invalid", "sim VCEK key is not an EC key")
        return cls(ark=certs[0], ask=certs[1], vcek=certs[2], vcek_key=key)

    def _save(self, folder: Path) -> None:
        for name, cert in zip(_FILES[:3], self.chain[::-1], strict=True):
            (folder / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_pem = self.vcek_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_secret_file(folder / "vcek.key", key_pem)
