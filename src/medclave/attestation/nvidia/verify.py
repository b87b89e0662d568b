"""Verification of H100 SPDM evidence: chain, signature, nonce, FWID, then reference manifests.

Checks, in order (each a :class:`~medclave.attestation.core.Check`, the first failure raises):

1. Device certificate chain, leaf first: GSP FMC LF -> GSP BROM -> GH100 Provisioner ICA 1 ->
   NVIDIA GH100 Identity -> NVIDIA Device Identity CA, the root pinned by SHA-256 fingerprint
   (NVIDIA nvtrust ``verifier_device_root.pem``). The whole five-certificate chain is required and
   its leaf must carry the TCG DICE TcbInfo extension (OID 2.23.133.5.4.1) with a SHA-384 FWID:
   a shorter chain whose links happen to verify proves nothing about the GPU's firmware.
2. The response signature: ECDSA P-384, raw r||s, by the leaf key over SHA-384 of
   GET_MEASUREMENTS request || MEASUREMENTS response without its signature (DSP0274 1.1
   §10.11.2, Table 43 "Signature"; SPDM 1.1 signs L1/L2 without the 1.2 signing prefix).
3. The requester's nonce equals ``options.expected_nonce`` when one is given (freshness).
4. The FWID opaque field equals the leaf's FWID (nvtrust: the GSP FMC measurement the device
   certificate was derived from must be the one reporting).
5. Reference integrity manifests, when given in ``options.endorsements.collateral`` (see
   :mod:`.rim`): each verifies; their measurements are compared with the report's blocks.

Online revocation (OCSP) runs only through an explicit provider in ``options.online``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from medclave.attestation.cache import VerdictCache
from medclave.attestation.core import CheckLog, Verification, VerifyOptions, sha256_hex
from medclave.attestation.nvidia import abi, rim
from medclave.attestation.providers import check_chain_online
from medclave.attestation.x509chain import fingerprint, verify_chain
from medclave.errors import AttestationError

PLATFORM = "nvidia"

# SHA-256 of the DER of "NVIDIA Device Identity CA" (P-384, valid to 9999), from NVIDIA nvtrust
# local_gpu_verifier/src/verifier/certs/verifier_device_root.pem.
DEVICE_ROOT_FINGERPRINTS: frozenset[str] = frozenset({
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48",
})

HOPPER_CHAIN_LENGTH = 5
OID_TCG_DICE_TCBINFO = x509.ObjectIdentifier("2.23.133.5.4.1")
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
FWID_LENGTH = 48


# --- TCG DICE TcbInfo (FWID) -------------------------------------------------------------------


@dataclass(frozen=True)
class Fwid:
    hash_alg: str  # dotted OID
    digest: bytes


def _der_items(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """Top-level DER TLVs of ``data``: definite lengths only, every byte accounted for."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise AttestationError("attestation.malformed", f"{what}: truncated DER")
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise AttestationError("attestation.malformed", f"{what}: multi-byte DER tag")
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 3 or pos + n > len(data):
                raise AttestationError("attestation.malformed", f"{what}: bad DER length")
            length = int.from_bytes(data[pos:pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise AttestationError("attestation.malformed", f"{what}: DER value overruns")
        items.append((tag, data[pos:pos + length]))
        pos += length
    return items


def _decode_oid(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        raise AttestationError("attestation.malformed", "FWID hash algorithm OID malformed")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def _as_fwid(body: bytes) -> Fwid | None:
    """``FWID ::= SEQUENCE { hashAlg OBJECT IDENTIFIER, digest OCTET STRING }`` or None."""
    parts = _der_items(body, "FWID")
    if len(parts) != 2 or parts[0][0] != 0x06 or parts[1][0] != 0x04:
        return None
    return Fwid(_decode_oid(parts[0][1]), parts[1][1])


def parse_tcb_info(value: bytes) -> tuple[Fwid, ...]:
    """FWIDs of a TCG DICE TcbInfo extension value, in either layout found in the field.

    * TCG DICE Attestation Architecture ``DiceTcbInfo``: ``fwids [6] IMPLICIT FWIDLIST``;
    * the earlier DICE composite layout that NVIDIA's GSP FMC certificates use:
      ``SEQUENCE { version INTEGER, deviceId SubjectPublicKeyInfo, fwid FWID }``.
    """
    outer = _der_items(value, "TcbInfo")
    if len(outer) != 1 or outer[0][0] != 0x30:
        raise AttestationError("attestation.malformed", "TcbInfo is not one DER SEQUENCE")
    fwids: list[Fwid] = []
    for tag, body in _der_items(outer[0][1], "TcbInfo"):
        if tag == 0xA6:  # [6] constructed: FWIDLIST
            for inner_tag, inner in _der_items(body, "FWIDLIST"):
                fwid = _as_fwid(inner) if inner_tag == 0x30 else None
                if fwid is None:
                    raise AttestationError("attestation.malformed", "FWIDLIST entry malformed")
                fwids.append(fwid)
        elif tag == 0x30:
            fwid = _as_fwid(body)
            if fwid is not None:
                fwids.append(fwid)
    return tuple(fwids)


def leaf_fwid(cert: x509.Certificate) -> bytes | None:
    """The leaf's SHA-384 FWID, or None when the extension or a SHA-384 FWID is absent."""
    try:
        ext = cert.extensions.get_extension_for_oid(OID_TCG_DICE_TCBINFO)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or undecodable extensions
        raise AttestationError("attestation.malformed", f"leaf extensions: {exc}") from exc
    raw = ext.value
    if not isinstance(raw, x509.UnrecognizedExtension):
        return None
    for fwid in parse_tcb_info(raw.value):
        if fwid.hash_alg == OID_SHA384 and len(fwid.digest) == FWID_LENGTH:
            return fwid.digest
    return None


# --- chain cache -------------------------------------------------------------------------------


class ChainCache:
    """Chains already verified, keyed by every certificate's fingerprint and the trusted roots.

    An entry stores the window in which every certificate is valid; a hit outside it is a miss,
    so the injected time is honoured exactly as on the uncached path. Bounded LRU, thread-safe.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self._verdicts: VerdictCache[tuple[Any, ...], bool] = VerdictCache(maxsize)

    @staticmethod
    def key(chain: Sequence[x509.Certificate], roots: frozenset[str]) -> tuple[Any, ...]:
        return (tuple(fingerprint(c) for c in chain), tuple(sorted(roots)))

    def hit(self, key: tuple[Any, ...], now: datetime) -> bool:
        return self._verdicts.get(key, now) is not None

    def add(self, key: tuple[Any, ...], chain: Sequence[x509.Certificate]) -> None:
        start = max(c.not_valid_before_utc for c in chain)
        end = min(c.not_valid_after_utc for c in chain)
        self._verdicts.put(key, True, valid_from=start, valid_until=end)

    def clear(self) -> None:
        self._verdicts.clear()


DEFAULT_CHAIN_CACHE = ChainCache()


# --- the checks --------------------------------------------------------------------------------


def _verify_device_chain(
    chain: Sequence[x509.Certificate],
    roots: frozenset[str],
    now: datetime,
    log: CheckLog,
    cache: ChainCache | None,
) -> bytes:
    """Check 1; returns the leaf FWID."""
    name = "1. device certificate chain"
    if not chain:
        raise log.fail(name, "attestation.certificate_missing",
                       "no GPU certificate chain in endorsements.certificates")
    key = ChainCache.key(chain, roots) if cache is not None else None
    if cache is not None and key is not None and cache.hit(key, now):
        log.ok(name, "verified earlier, valid now (cached)")
    else:
        verify_chain(chain, trusted_roots=roots, now=now, log=log, name=name)
        if cache is not None and key is not None:
            cache.add(key, chain)
    shape = "1. device chain shape"
    if len(chain) != HOPPER_CHAIN_LENGTH:
        raise log.fail(shape, "attestation.certificate_missing",
                       f"the Hopper device chain has {HOPPER_CHAIN_LENGTH} certificates "
                       f"(GSP FMC LF to Device Identity CA); {len(chain)} given")
    leaf = chain[0]
    try:
        is_ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        raise log.fail(shape, "attestation.chain_invalid", "the chain's leaf is a CA certificate")
    fwid = leaf_fwid(leaf)
    if fwid is None:
        raise log.fail(shape, "attestation.certificate_missing",
                       "the leaf carries no TCG DICE TcbInfo (2.23.133.5.4.1) SHA-384 FWID")
    if not isinstance(leaf.public_key(), ec.EllipticCurvePublicKey):
        raise log.fail(shape, "attestation.chain_invalid", "the leaf key is not ECDSA")
    log.ok(shape, f"{len(chain)} certificates, leaf FWID {fwid.hex()[:16]}…")
    return fwid


def _verify_signature(report: abi.AttestationReport, leaf: x509.Certificate, log: CheckLog) -> None:
    name = "2. SPDM signature"
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise log.fail(name, "attestation.chain_invalid", "the leaf key is not ECDSA P-384")
    half = abi.P384_SIGNATURE_LENGTH // 2
    r = int.from_bytes(report.signature[:half], "big")
    s = int.from_bytes(report.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError) as exc:
        raise log.fail(name, "attestation.signature_invalid",
                       "ECDSA P-384 signature over request || response does not verify "
                       "with the GSP FMC leaf key") from exc
    log.ok(name, "ECDSA P-384 / SHA-384 over request || response")


def _verify_nonce(report: abi.AttestationReport, expected: bytes | None, log: CheckLog) -> None:
    name = "3. nonce"
    nonce = report.request.nonce
    if expected is None:
        log.ok(name, f"{nonce.hex()} (no expected nonce given: freshness is the caller's)")
        return
    if not hmac.compare_digest(nonce, expected):
        raise log.fail(name, "attestation.nonce_mismatch",
                       f"request nonce {nonce.hex()[:16]}… is not the expected "
                       f"{expected.hex()[:16]}…")
    log.ok(name, f"{nonce.hex()} as expected")


def _verify_fwid(report: abi.AttestationReport, cert_fwid: bytes, log: CheckLog) -> None:
    name = "4. FWID"
    fwid = report.opaque.get(abi.OPAQUE_FWID)
    if fwid is None:
        raise log.fail(name, "attestation.tcb_mismatch", "the report carries no FWID opaque field")
    if not hmac.compare_digest(fwid, cert_fwid):
        raise log.fail(name, "attestation.tcb_mismatch",
                       f"report FWID {fwid.hex()[:16]}… differs from the leaf's "
                       f"{cert_fwid.hex()[:16]}…")
    log.ok(name, f"{fwid.hex()} equals the leaf certificate's")


def verify_report(
    data: bytes,
    options: VerifyOptions,
    *,
    chain_cache: ChainCache | None = DEFAULT_CHAIN_CACHE,
    rim_roots: frozenset[str] | None = None,
) -> Verification:
    """Every check above; raises :class:`AttestationError` (with ``checks``) at the first failure.

    ``chain_cache`` None verifies the chain every time; ``rim_roots`` overrides the pinned CoRIM
    root (tests that sign their own manifests).
    """
    report = abi.parse_report(data)
    claims = abi.report_claims(report)
    log = CheckLog()
    log.ok("0. parse", f"SPDM {claims['spdm_version']}, {len(report.blocks)} measurement blocks, "
                       f"{report.trailing} unsigned trailing byte(s) after the signature ignored")

    chain = options.endorsements.certificates
    roots = options.trusted_roots if options.trusted_roots is not None else DEVICE_ROOT_FINGERPRINTS
    cert_fwid = _verify_device_chain(chain, roots, options.now, log, chain_cache)
    _verify_signature(report, chain[0], log)
    _verify_nonce(report, options.expected_nonce, log)
    _verify_fwid(report, cert_fwid, log)

    if rim_roots is None:
        rim_roots = options.trusted_roots if options.trusted_roots is not None else (
            rim.RIM_ROOT_FINGERPRINTS
        )
    manifests = rim.verify_collateral(
        options.endorsements.collateral, now=options.now, trusted_roots=rim_roots, log=log
    )
    if manifests:
        rim.appraise(report, claims, manifests, log)
    claims["rims"] = [m.summary() for m in manifests]
    claims["rim_kinds"] = sorted({m.kind for m in manifests})

    if options.online is not None:
        check_chain_online(options.online, chain, now=options.now, log=log,
                           name="6. device chain revocation (OCSP)", skip_leaf=True)
        for m in manifests:
            check_chain_online(options.online, m.chain, now=options.now, log=log,
                               name=f"6. {m.kind} RIM chain revocation (OCSP)", skip_leaf=False)
        claims["revocation_checked"] = True
    else:
        claims["revocation_checked"] = False

    return Verification(
        platform=PLATFORM,
        claims=claims,
        checks=log.checks,
        # Only NVIDIA's device root makes this a genuine GPU; a chain to a caller's
        # trusted_roots verifies the same way but protects nothing.
        secure=fingerprint(chain[-1]) in DEVICE_ROOT_FINGERPRINTS,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(report.signed),
    )
