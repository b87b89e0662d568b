"""A synthetic AMD-like chain (ARK -> ASK -> VCEK/VLEK) and signed reports, for the paths real
vectors cannot reach: Turin reports, CRLs, TCB/chip mismatches under a test trust anchor."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from medclave.attestation.sevsnp.abi import Report, TcbParts, encode_report, signature_fields
from medclave.attestation.x509chain import fingerprint

KDS = "1.3.6.1.4.1.3704.1"
NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2034, 1, 1, tzinfo=UTC)

SignKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Medclave test")])


def _int(n: int) -> bytes:
    body = n.to_bytes(1, "big") if n < 0x80 else b"\x00" + n.to_bytes(1, "big")
    return bytes([0x02, len(body)]) + body


def _ia5(s: str) -> bytes:
    return bytes([0x16, len(s)]) + s.encode()


def _algo(key: SignKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()


def _cert(
    subject: str, issuer: str, public: object, signer: SignKey, *, ca: bool,
    path_length: int | None = None, exts: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
    not_before: datetime = NOT_BEFORE, not_after: datetime = NOT_AFTER, serial: int = 1,
) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(public).serial_number(serial)  # type: ignore[arg-type]
         .not_valid_before(not_before).not_valid_after(not_after))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    for oid, value in exts:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value),
                            critical=False)
    return b.sign(signer, _algo(signer))  # type: ignore[arg-type]


def kds_exts(product: str, tcb: TcbParts, *, hwid: bytes | None, csp_id: str | None = None,
             wrap_hwid: bool = False) -> list[tuple[str, bytes]]:
    out = [(f"{KDS}.1", _int(1 if product == "Turin" else 0)), (f"{KDS}.2", _ias(product))]
    out += [(f"{KDS}.3.1", _int(tcb.bl)), (f"{KDS}.3.2", _int(tcb.tee)),
            (f"{KDS}.3.3", _int(tcb.snp)), (f"{KDS}.3.8", _int(tcb.ucode))]
    if tcb.fmc is not None:
        out.append((f"{KDS}.3.9", _int(tcb.fmc)))
    if hwid is not None:
        out.append((f"{KDS}.4", (bytes([0x04, len(hwid)]) + hwid) if wrap_hwid else hwid))
    if csp_id is not None:
        out.append((f"{KDS}.5", _ia5(csp_id)))
    return out


def _ias(product: str) -> bytes:
    return _ia5(product if product != "Milan" else "Milan-B0")


@dataclass(frozen=True)
class Chain:
    ark: x509.Certificate
    ask: x509.Certificate
    leaf: x509.Certificate
    ark_key: SignKey
    ask_key: SignKey
    leaf_key: ec.EllipticCurvePrivateKey

    @property
    def certs(self) -> tuple[x509.Certificate, ...]:
        return (self.leaf, self.ask, self.ark)

    @property
    def roots(self) -> frozenset[str]:
        return frozenset({fingerprint(self.ark)})


def make_chain(
    product: str = "Milan",
    *,
    kind: Literal["vcek", "vlek"] = "vcek",
    tcb: TcbParts,
    hwid: bytes | None,
    wrap_hwid: bool = False,
    ark_type: Literal["ec", "ed25519"] = "ec",
    leaf_curve: ec.EllipticCurve | None = None,
    leaf_not_after: datetime = NOT_AFTER,
) -> Chain:
    ark_key: SignKey = (ed25519.Ed25519PrivateKey.generate() if ark_type == "ed25519"
                        else ec.generate_private_key(ec.SECP384R1()))
    ask_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(leaf_curve or ec.SECP384R1())
    ark_cn, ask_cn = f"ARK-{product}", f"SEV-{product}" if kind == "vcek" else f"SEV-VLEK-{product}"
    ark = _cert(ark_cn, ark_cn, ark_key.public_key(), ark_key, ca=True)
    ask = _cert(ask_cn, ark_cn, ask_key.public_key(), ark_key, ca=True, path_length=0, serial=2)
    leaf = _cert(
        f"SEV-{kind.upper()}", ask_cn, leaf_key.public_key(), ask_key, ca=False, serial=3,
        not_after=leaf_not_after,
        exts=kds_exts(product, tcb, hwid=hwid, wrap_hwid=wrap_hwid,
                      csp_id="CN=cloud.example" if kind == "vlek" else None),
    )
    return Chain(ark=ark, ask=ask, leaf=leaf, ark_key=ark_key, ask_key=ask_key, leaf_key=leaf_key)


def sign(report: Report, key: ec.EllipticCurvePrivateKey) -> bytes:
    unsigned = replace(report, signature_r=bytes(72), signature_s=bytes(72), raw=b"")
    der = key.sign(encode_report(unsigned)[:0x2A0], ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    rb, sb = signature_fields(r, s)
    return encode_report(replace(unsigned, signature_r=rb, signature_s=sb))


def make_crl(
    issuer: x509.Certificate, key: SignKey, *, revoked: tuple[int, ...] = (),
    last: datetime = datetime(2025, 1, 1, tzinfo=UTC), days: int = 365,
) -> x509.CertificateRevocationList:
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
         .last_update(last).next_update(last + timedelta(days=days)))
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last).build()
        )
    return b.sign(key, _algo(key))  # type: ignore[arg-type]
