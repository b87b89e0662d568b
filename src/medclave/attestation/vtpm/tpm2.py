"""TPM 2.0 quotes: TPMS_ATTEST, TPMT_SIGNATURE and TPML_PCR_SELECTION, parsed and verified.

Section numbers refer to TCG "Trusted Platform Module Library, Part 2: Structures" (rev. 1.59)
and Part 3 (Commands). Everything is big-endian (Part 1 §18.3, "canonical" byte order); every
TPM2B length is checked against the structure's maximum before a byte is read.

A quote proves what a TPM holding the attestation key (AK) signed; it says nothing about who holds
that key. Callers establish the AK (pinned fingerprint, or a hardware report binding it) first.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from medclave.attestation.core import CheckLog
from medclave.errors import AttestationError

# Part 2 §6.2: every structure the TPM itself generates and signs starts with this value, so a
# restricted signing key can never be made to sign a forged TPMS_ATTEST.
TPM_GENERATED_VALUE = 0xFF544347
# Part 2 §6.9 TPM_ST: the tag of a TPMS_ATTEST produced by TPM2_Quote.
TPM_ST_ATTEST_QUOTE = 0x8018

# Part 2 §6.3 TPM_ALG_ID.
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
TPM_ALG_NULL = 0x0010
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_ECDSA = 0x0018

HASH_NAMES: Mapping[int, str] = {
    TPM_ALG_SHA1: "sha1",
    TPM_ALG_SHA256: "sha256",
    TPM_ALG_SHA384: "sha384",
    TPM_ALG_SHA512: "sha512",
}
_DIGEST_SIZES: Mapping[int, int] = {
    TPM_ALG_SHA1: 20,
    TPM_ALG_SHA256: 32,
    TPM_ALG_SHA384: 48,
    TPM_ALG_SHA512: 64,
}
# SHA-1 is parsed (PCR banks may use it) but never accepted as a signature hash.
_SIGNING_HASHES: Mapping[int, type[hashes.HashAlgorithm]] = {
    TPM_ALG_SHA256: hashes.SHA256,
    TPM_ALG_SHA384: hashes.SHA384,
    TPM_ALG_SHA512: hashes.SHA512,
}
SIGNATURE_NAMES: Mapping[int, str] = {
    TPM_ALG_RSASSA: "RSASSA-PKCS1-v1_5",
    TPM_ALG_RSAPSS: "RSASSA-PSS",
    TPM_ALG_ECDSA: "ECDSA",
}

# Bounds. TPMS_ATTEST for a quote is well under 1 KiB (Part 2 §10.12.12); TPMT_SIGNATURE is at
# most an RSA-4096 signature plus 6 bytes (§11.3.4).
MAX_ATTEST_BYTES = 2048
MAX_SIGNATURE_BYTES = 1024
MAX_NAME_BYTES = 2 + 64  # sizeof(TPMU_NAME): a TPMT_HA with SHA-512 (§10.5.3)
MAX_DATA_BYTES = 2 + 64  # TPM2B_DATA holds up to sizeof(TPMT_HA) (§10.4.3)
MAX_DIGEST_BYTES = 64  # TPM2B_DIGEST: sizeof(TPMU_HA) (§10.4.2)
MAX_PCR_SELECTIONS = 8  # HASH_COUNT bound for TPML_PCR_SELECTION (§10.9.7)
MAX_SIZEOF_SELECT = 8  # PCR_SELECT_MAX for up to 64 PCRs (§10.6.2)
MAX_PCRS = 24 * 4
MIN_RSA_BITS = 2048
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def _malformed(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", detail)


class _Reader:
    """A bounded big-endian cursor; any read past the end is ``attestation.malformed``."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise _malformed(f"{self._what}: truncated at byte {self._pos} (need {n})")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def tpm2b(self, maximum: int, field: str) -> bytes:
        size = self.u16()
        if size > maximum:
            raise _malformed(f"{self._what}: {field} is {size} bytes, over {maximum}")
        return self.take(size)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise _malformed(f"{self._what}: {len(self._data) - self._pos} trailing bytes")


@dataclass(frozen=True)
class PcrSelection:
    """TPMS_PCR_SELECTION (Part 2 §10.6.2): one bank and the PCR indices selected in it."""

    hash_alg: int
    indices: tuple[int, ...]

    @property
    def bank(self) -> str:
        return HASH_NAMES[self.hash_alg]


@dataclass(frozen=True)
class QuoteAttest:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (Part 2 §10.12.12, TPMS_QUOTE_INFO §10.12.4)."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes

    def claims(self) -> dict[str, Any]:
        return {
            "qualified_signer": self.qualified_signer.hex(),
            "clock": f"{self.clock:016x}",  # u64: hex, as JSON numbers stop at 2^53
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "safe": self.safe,
            "firmware_version": f"{self.firmware_version:016x}",
            "pcr_selection": {s.bank: list(s.indices) for s in self.selections},
        }


@dataclass(frozen=True)
class TpmSignature:
    """TPMT_SIGNATURE (Part 2 §11.3.4) reduced to what verification needs.

    ``value`` is the raw RSA signature, or the DER encoding of (r, s) for ECDSA.
    """

    sig_alg: int
    hash_alg: int
    value: bytes


def _parse_selection(reader: _Reader) -> tuple[PcrSelection, ...]:
    count = reader.u32()
    if count > MAX_PCR_SELECTIONS:
        raise _malformed(f"TPML_PCR_SELECTION count {count} over {MAX_PCR_SELECTIONS}")
    selections: list[PcrSelection] = []
    seen: set[int] = set()
    for _ in range(count):
        hash_alg = reader.u16()
        if hash_alg not in HASH_NAMES:
            raise _malformed(f"PCR bank hash 0x{hash_alg:04x} is not supported")
        if hash_alg in seen:
            # A bank selected twice would make "selection order" ambiguous; no TPM emits it.
            raise _malformed(f"PCR bank {HASH_NAMES[hash_alg]} selected twice")
        seen.add(hash_alg)
        size = reader.u8()
        if not 1 <= size <= MAX_SIZEOF_SELECT:
            raise _malformed(f"sizeofSelect {size} out of range")
        bitmap = reader.take(size)
        # §10.6.2: bit n of octet i selects PCR 8*i + n; the digest order is ascending index.
        indices = tuple(8 * i + bit for i, octet in enumerate(bitmap) for bit in range(8)
                        if octet >> bit & 1)
        selections.append(PcrSelection(hash_alg, indices))
    return tuple(selections)


def parse_attest(message: bytes) -> QuoteAttest:
    """Parse a marshalled TPMS_ATTEST that must be a TPM-generated quote. No cryptography."""
    if len(message) > MAX_ATTEST_BYTES:
        raise _malformed(f"TPMS_ATTEST is {len(message)} bytes, over {MAX_ATTEST_BYTES}")
    r = _Reader(message, "TPMS_ATTEST")
    magic = r.u32()
    if magic != TPM_GENERATED_VALUE:
        raise _malformed(f"TPMS_ATTEST magic 0x{magic:08x} is not TPM_GENERATED_VALUE")
    attest_type = r.u16()
    if attest_type != TPM_ST_ATTEST_QUOTE:
        raise _malformed(f"TPMS_ATTEST type 0x{attest_type:04x} is not TPM_ST_ATTEST_QUOTE")
    qualified_signer = r.tpm2b(MAX_NAME_BYTES, "qualifiedSigner")
    extra_data = r.tpm2b(MAX_DATA_BYTES, "extraData")
    clock, reset_count, restart_count, safe = r.u64(), r.u32(), r.u32(), r.u8()  # §10.11.1
    if safe > 1:
        raise _malformed("TPMS_CLOCK_INFO.safe is not a TPMI_YES_NO")
    firmware_version = r.u64()
    selections = _parse_selection(r)
    pcr_digest = r.tpm2b(MAX_DIGEST_BYTES, "pcrDigest")
    r.end()
    return QuoteAttest(
        qualified_signer=qualified_signer,
        extra_data=extra_data,
        clock=clock,
        reset_count=reset_count,
        restart_count=restart_count,
        safe=bool(safe),
        firmware_version=firmware_version,
        selections=selections,
        pcr_digest=pcr_digest,
    )


def parse_signature(data: bytes) -> TpmSignature:
    """Parse a marshalled TPMT_SIGNATURE (Part 2 §11.3.4) of an RSA or ECDSA scheme."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise _malformed(f"TPMT_SIGNATURE is {len(data)} bytes, over {MAX_SIGNATURE_BYTES}")
    r = _Reader(data, "TPMT_SIGNATURE")
    sig_alg = r.u16()
    hash_alg = r.u16()
    if sig_alg in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
        value = r.tpm2b(MAX_SIGNATURE_BYTES, "sig")  # TPMS_SIGNATURE_RSA (§11.3.1)
    elif sig_alg == TPM_ALG_ECDSA:
        # TPMS_SIGNATURE_ECC (§11.3.2): two TPM2B_ECC_PARAMETER, up to P-521's 66 bytes each.
        sig_r = r.tpm2b(66, "signatureR")
        sig_s = r.tpm2b(66, "signatureS")
        value = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
    else:
        raise _malformed(f"signature scheme 0x{sig_alg:04x} is not supported")
    r.end()
    return TpmSignature(sig_alg, hash_alg, value)


def rsassa_sha256(raw: bytes) -> TpmSignature:
    """A bare RSA signature, as the Azure vTPM evidence carries it (RSASSA with SHA-256)."""
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise _malformed(f"signature is {len(raw)} bytes, over {MAX_SIGNATURE_BYTES}")
    return TpmSignature(TPM_ALG_RSASSA, TPM_ALG_SHA256, raw)


def load_public_key(spki_der: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """An AK public key from SubjectPublicKeyInfo DER; only RSA and NIST-curve EC keys."""
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _malformed(f"AK public key is not SubjectPublicKeyInfo DER: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return key
    raise _malformed(f"AK public key type {type(key).__name__} is not RSA or EC")


def key_fingerprint(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER, lower hex: how an AK is pinned."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def verify_signature(
    message: bytes,
    signature: TpmSignature,
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    log: CheckLog,
    name: str = "TPM quote signature",
) -> None:
    """The AK signed ``message`` under the scheme the TPMT_SIGNATURE names (Part 1 §B.7, §C.7)."""
    hash_cls = _SIGNING_HASHES.get(signature.hash_alg)
    scheme = SIGNATURE_NAMES.get(signature.sig_alg, f"0x{signature.sig_alg:04x}")
    if hash_cls is None:
        raise log.fail(name, "attestation.signature_invalid",
                       f"signature hash 0x{signature.hash_alg:04x} is not accepted (SHA-2 only)")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise log.fail(name, "attestation.signature_invalid",
                               f"RSA AK of {key.key_size} bits is below {MIN_RSA_BITS}")
            if signature.sig_alg == TPM_ALG_RSASSA:
                key.verify(signature.value, message, padding.PKCS1v15(), hash_cls())
            elif signature.sig_alg == TPM_ALG_RSAPSS:
                # TPMs use a salt the size of the digest, older ones the maximum; the salt length
                # is recovered from the signature (RFC 8017 §9.1.2), either is accepted.
                pss = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.AUTO)
                key.verify(signature.value, message, pss, hash_cls())
            else:
                raise InvalidSignature(f"{scheme} signature with an RSA key")
        else:
            if not isinstance(key.curve, _CURVES):
                raise log.fail(name, "attestation.signature_invalid",
                               f"EC AK on curve {key.curve.name} is not accepted")
            if signature.sig_alg != TPM_ALG_ECDSA:
                raise InvalidSignature(f"{scheme} signature with an EC key")
            key.verify(signature.value, message, ec.ECDSA(hash_cls()))
    except (InvalidSignature, ValueError) as exc:
        raise log.fail(name, "attestation.signature_invalid",
                       f"{scheme}/{HASH_NAMES[signature.hash_alg]} signature does not verify "
                       f"with the AK ({exc or 'bad signature'})") from exc
    log.ok(name, f"{scheme}/{HASH_NAMES[signature.hash_alg]} by AK {key_fingerprint(key)[:16]}…")


def bind_pcr_values(
    selections: Sequence[PcrSelection], values: Sequence[bytes]
) -> tuple[tuple[PcrSelection, int, bytes], ...]:
    """Pair the supplied PCR values with the selection, in selection order (bank, then index).

    The evidence lists the values of exactly the selected PCRs in that order (as TPM2_PCR_Read
    returns them); anything else is malformed rather than silently re-ordered.
    """
    wanted = [(sel, index) for sel in selections for index in sel.indices]
    if len(values) != len(wanted):
        raise _malformed(f"{len(values)} PCR values for {len(wanted)} selected PCRs")
    bound: list[tuple[PcrSelection, int, bytes]] = []
    for (sel, index), value in zip(wanted, values, strict=True):
        if len(value) != _DIGEST_SIZES[sel.hash_alg]:
            raise _malformed(f"PCR {sel.bank}:{index} value is {len(value)} bytes")
        bound.append((sel, index, value))
    return tuple(bound)


def verify_pcr_digest(
    attest: QuoteAttest,
    values: Sequence[bytes],
    digest_alg: int,
    *,
    log: CheckLog,
) -> dict[str, dict[str, str]]:
    """Part 3 §18.4: pcrDigest = H(PCR values of the selection, concatenated in selection order),
    H the hash of the signing scheme. Returns the now-attested values as {bank: {index: hex}}."""
    name = "PCR digest"
    bound = bind_pcr_values(attest.selections, values)
    hash_name = HASH_NAMES.get(digest_alg)
    if hash_name is None or digest_alg not in _SIGNING_HASHES:
        raise log.fail(name, "attestation.pcr_mismatch", f"digest hash 0x{digest_alg:04x}")
    computed = hashlib.new(hash_name, b"".join(v for _, _, v in bound)).digest()
    if not hmac.compare_digest(computed, attest.pcr_digest):
        raise log.fail(name, "attestation.pcr_mismatch",
                       f"{hash_name}(PCRs) = {computed.hex()[:16]}… but the quote signs "
                       f"{attest.pcr_digest.hex()[:16]}…")
    banks: dict[str, dict[str, str]] = {}
    for sel, index, value in bound:
        banks.setdefault(sel.bank, {})[str(index)] = value.hex()
    log.ok(name, f"{len(bound)} PCRs, {hash_name} = {computed.hex()[:16]}…")
    return banks


def unverified_pcrs(attest: QuoteAttest, values: Sequence[bytes]) -> dict[str, dict[str, str]]:
    """The PCR values as {bank: {index: hex}} for ``parse`` (nothing checked)."""
    banks: dict[str, dict[str, str]] = {}
    for sel, index, value in bind_pcr_values(attest.selections, values):
        banks.setdefault(sel.bank, {})[str(index)] = value.hex()
    return banks


def check_nonce(attest: QuoteAttest, expected: bytes | None, *, log: CheckLog) -> None:
    """extraData is the caller's qualifying data (Part 3 §18.4 TPM2_Quote ``qualifyingData``)."""
    name = "nonce (extraData)"
    if expected is None:
        log.ok(name, f"not checked: no expected nonce given (extraData {attest.extra_data.hex()})")
        return
    if not hmac.compare_digest(expected, attest.extra_data):
        raise log.fail(name, "attestation.nonce_mismatch",
                       f"extraData {attest.extra_data.hex()[:32]} is not the expected nonce")
    log.ok(name, "extraData = expected nonce")


@dataclass(frozen=True)
class VerifiedQuote:
    attest: QuoteAttest
    pcr_banks: dict[str, dict[str, str]]
    ak_fingerprint: str


def verify_quote(
    message: bytes,
    signature: TpmSignature,
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    pcr_values: Sequence[bytes],
    *,
    expected_nonce: bytes | None,
    log: CheckLog,
) -> VerifiedQuote:
    """Verify a TPM2 quote with a given, already-trusted AK.

    The signature is checked over the raw bytes first, so every altered byte of the message is a
    signature failure; only then is the (now authentic) structure interpreted.
    """
    if len(message) > MAX_ATTEST_BYTES:
        raise log.fail("TPM quote signature", "attestation.malformed",
                       f"TPMS_ATTEST is {len(message)} bytes, over {MAX_ATTEST_BYTES}")
    verify_signature(message, signature, key, log=log)
    try:
        attest = parse_attest(message)
    except AttestationError as exc:
        raise log.fail("TPM quote structure", exc.code, exc.detail) from exc
    log.ok("TPM quote structure", "TPMS_ATTEST: TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE")
    try:
        banks = verify_pcr_digest(attest, pcr_values, signature.hash_alg, log=log)
    except AttestationError as exc:
        if exc.checks:
            raise
        raise log.fail("PCR digest", exc.code, exc.detail) from exc
    check_nonce(attest, expected_nonce, log=log)
    return VerifiedQuote(attest, banks, key_fingerprint(key))


# --- TPMT_PUBLIC (Part 2 §12.2.4): the AK's public area, as go-tpm-tools carries it -----------

TPM_ALG_RSA = 0x0001
TPM_ALG_ECC = 0x0023
# TPMA_OBJECT (Part 2 §8.3): an AK is a restricted signing key bound to its TPM, so it signs
# only TPM-generated structures (a quote) and never arbitrary data shaped like one.
TPMA_FIXED_TPM, TPMA_RESTRICTED, TPMA_SIGN = 1 << 1, 1 << 16, 1 << 18
_ECC_CURVES: Mapping[int, ec.EllipticCurve] = {0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1(),
                                              0x0005: ec.SECP521R1()}
MAX_PUBLIC_BYTES = 1024


@dataclass(frozen=True)
class TpmPublic:
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    name_alg: int
    attributes: int

    @property
    def restricted_signing(self) -> bool:
        need = TPMA_FIXED_TPM | TPMA_RESTRICTED | TPMA_SIGN
        return self.attributes & need == need


def parse_public(data: bytes) -> TpmPublic:
    """A marshalled TPMT_PUBLIC of an RSA or ECC signing key. No cryptography."""
    if len(data) > MAX_PUBLIC_BYTES:
        raise _malformed(f"TPMT_PUBLIC is {len(data)} bytes, over {MAX_PUBLIC_BYTES}")
    r = _Reader(data, "TPMT_PUBLIC")
    kind, name_alg, attributes = r.u16(), r.u16(), r.u32()
    r.tpm2b(MAX_DIGEST_BYTES, "authPolicy")
    if r.u16() != TPM_ALG_NULL:  # a signing key has no symmetric algorithm (§12.2.3.5)
        raise _malformed("TPMT_PUBLIC of a signing key names a symmetric algorithm")
    scheme = r.u16()
    if scheme != TPM_ALG_NULL:
        r.u16()  # the scheme's hash
    try:
        if kind == TPM_ALG_RSA:
            bits, exponent = r.u16(), r.u32() or 65537  # §12.2.3.5: 0 means 2^16 + 1
            modulus = r.tpm2b(512, "unique.rsa")
            if len(modulus) * 8 != bits:
                raise _malformed(f"RSA modulus of {len(modulus)} bytes for {bits} key bits")
            key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = rsa.RSAPublicNumbers(
                exponent, int.from_bytes(modulus, "big")).public_key()
        elif kind == TPM_ALG_ECC:
            curve, kdf = r.u16(), r.u16()
            if kdf != TPM_ALG_NULL or curve not in _ECC_CURVES:
                raise _malformed(f"ECC curve 0x{curve:04x} / KDF is not supported")
            x, y = r.tpm2b(66, "unique.x"), r.tpm2b(66, "unique.y")
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                _ECC_CURVES[curve]).public_key()
        else:
            raise _malformed(f"TPMT_PUBLIC type 0x{kind:04x} is not RSA or ECC")
    except ValueError as exc:
        raise _malformed(f"TPMT_PUBLIC holds no valid key: {exc}") from exc
    r.end()
    return TpmPublic(key, name_alg, attributes)
