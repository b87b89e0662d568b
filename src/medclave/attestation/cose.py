"""Bounded CBOR decoding and COSE_Sign1 (RFC 9052 §4.2, §4.4) verification, for Nitro and CCA.

Written over ``cbor2`` and ``cryptography`` rather than taken from a COSE library: the COSE
packages on PyPI (``pycose``, ``cwt``) pull in their own CBOR and key stacks, accept algorithms
and header forms these two platforms never use, and none bounds its input. What both platforms
need is small: one structure (a 4-array of protected bstr, unprotected map, payload bstr,
signature bstr), the ``Sig_structure`` of §4.4, and ES256/ES384 (RFC 9053 §2.1: the signature
is r || s, each the size of the curve order). Anything else is refused.

CBOR from the outside is bounded before it is decoded (size), and every decoding failure,
whatever ``cbor2`` raises for it, is ``attestation.malformed``. Semantic tags other than the
ones a caller asks for are refused rather than interpreted: ``cbor2`` would otherwise turn a
tag 0 string into a datetime or a tag 2 into an integer inside evidence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from medclave.errors import AttestationError

COSE_SIGN1_TAG = 18
HEADER_ALG = 1
# RFC 9053 §2.1: COSE algorithm ids -> (hash, curve, bytes per coordinate).
ES256, ES384, ES512 = -7, -35, -36
_ECDSA: dict[int, tuple[type[hashes.HashAlgorithm], type[ec.EllipticCurve], int]] = {
    ES256: (hashes.SHA256, ec.SECP256R1, 32),
    ES384: (hashes.SHA384, ec.SECP384R1, 48),
    ES512: (hashes.SHA512, ec.SECP521R1, 66),
}
ALG_NAMES = {ES256: "ES256", ES384: "ES384", ES512: "ES512"}
MAX_CBOR_BYTES = 64 * 1024
MAX_DEPTH = 16


def malformed(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", detail)


class _TagRefused(Exception):
    pass


def _refuse_semantic(*_args: Any) -> Any:
    raise _TagRefused("semantic")


# The tags cbor2 decodes itself (RFC 8949 §3.4 and the IANA registry entries it implements):
# each is routed to a refusal so that only the tags a caller names reach the tag hook.
_SEMANTIC = {t: _refuse_semantic for t in (0, 1, 2, 3, 4, 5, 24, 25, 28, 29, 30, 35, 36, 37, 100,
                                            256, 258, 260, 261, 262, 263, 270, 1004, 55799)}


def _thaw(value: Any, level: int = 0) -> Any:
    """Plain lists and dicts (cbor2 freezes what sits inside a tag), depth-bounded."""
    if level > MAX_DEPTH:
        raise malformed(f"CBOR nested deeper than {MAX_DEPTH}")
    if isinstance(value, (list, tuple)):
        return [_thaw(item, level + 1) for item in value]
    if isinstance(value, (dict, cbor2.frozendict)):
        return {_key(k): _thaw(v, level + 1) for k, v in value.items()}
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, _thaw(value.value, level + 1))
    return value


def _key(key: Any) -> Any:
    if not isinstance(key, (int, str, bytes)) or isinstance(key, bool):
        raise malformed("CBOR map keys here are integers or strings")
    return key


_DECODE_ERRORS = (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError,
                  KeyError, IndexError, AttributeError, MemoryError)


def loads(data: bytes, *, what: str, tags: frozenset[int] = frozenset(),
          maximum: int = MAX_CBOR_BYTES) -> Any:
    """One CBOR item filling ``data`` exactly; only the semantic tags in ``tags`` are kept (as
    ``cbor2.CBORTag``), any other tag, an indefinite length, a duplicate map key or a map key
    that is not an integer or string is malformed."""
    if len(data) > maximum:
        raise malformed(f"{what} is {len(data)} bytes, over {maximum}")

    def hook(tag: cbor2.CBORTag, _immutable: bool) -> Any:
        if tag.tag not in tags:
            raise _TagRefused(tag.tag)
        return tag

    options: dict[str, Any] = {
        "tag_hook": hook, "semantic_decoders": _SEMANTIC, "max_depth": MAX_DEPTH,
        "allow_indefinite": False, "allow_duplicate_keys": False,
    }
    try:
        value = cbor2.loads(data, **options)
    except _TagRefused as exc:
        raise malformed(f"{what}: CBOR tag {exc.args[0]} is not allowed here") from exc
    except _DECODE_ERRORS as exc:
        raise malformed(f"{what}: not CBOR ({type(exc).__name__})") from exc
    # cbor2.loads ignores bytes after the first item. CBOR items are prefix-free: the item fills
    # ``data`` exactly if and only if ``data`` without its last byte no longer decodes.
    try:
        cbor2.loads(data[:-1], **options)
    except (_TagRefused, *_DECODE_ERRORS):
        pass
    else:
        raise malformed(f"{what}: bytes after the CBOR item")
    return _thaw(value)


@dataclass(frozen=True)
class Sign1:
    """A COSE_Sign1 message. ``protected`` is the exact bstr the signature covers."""

    protected: bytes
    protected_map: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool

    @property
    def alg(self) -> int | None:
        value = self.protected_map.get(HEADER_ALG)
        return value if type(value) is int else None

    def to_be_signed(self, external_aad: bytes = b"") -> bytes:
        """RFC 9052 §4.4: Sig_structure = ["Signature1", body_protected, external_aad, payload]."""
        return cbor2.dumps(["Signature1", self.protected, external_aad, self.payload])


def parse_sign1(value: Any, *, what: str) -> Sign1:
    """A decoded COSE_Sign1 (tag 18 optional) into its parts; the protected map is decoded."""
    tagged = isinstance(value, cbor2.CBORTag)
    if tagged:
        if value.tag != COSE_SIGN1_TAG:
            raise malformed(f"{what}: CBOR tag {value.tag} is not COSE_Sign1 (18)")
        value = value.value
    if not isinstance(value, list) or len(value) != 4:
        raise malformed(f"{what}: COSE_Sign1 is a 4-element array")
    protected, unprotected, payload, signature = value
    if not isinstance(protected, bytes) or not isinstance(unprotected, dict):
        raise malformed(f"{what}: COSE_Sign1 headers are a bstr and a map")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise malformed(f"{what}: COSE_Sign1 payload (detached payloads are not used) and "
                        "signature are bstr")
    protected_map = loads(protected, what=f"{what} protected header") if protected else {}
    if not isinstance(protected_map, dict):
        raise malformed(f"{what}: protected header is not a map")
    if HEADER_ALG in unprotected:
        raise malformed(f"{what}: alg in the unprotected header (RFC 9052 §3.1)")
    if 2 in protected_map:  # crit: no extension is implemented
        raise malformed(f"{what}: critical header parameters are not supported")
    return Sign1(protected, protected_map, unprotected, payload, signature, tagged)


def decode_sign1(data: bytes, *, what: str, maximum: int = MAX_CBOR_BYTES) -> Sign1:
    return parse_sign1(loads(data, what=what, tags=frozenset({COSE_SIGN1_TAG}), maximum=maximum),
                       what=what)


def signature_ok(msg: Sign1, key: ec.EllipticCurvePublicKey, *, alg: int) -> bool:
    """The ECDSA signature of ``msg`` by ``key`` under ``alg``, which the protected header must
    name and which must fit the key's curve. False on any mismatch; never raises."""
    spec = _ECDSA.get(alg)
    if spec is None or msg.alg != alg:
        return False
    hash_cls, curve, size = spec
    if not isinstance(key.curve, curve) or len(msg.signature) != 2 * size:
        return False
    der = encode_dss_signature(int.from_bytes(msg.signature[:size], "big"),
                               int.from_bytes(msg.signature[size:], "big"))
    try:
        key.verify(der, msg.to_be_signed(), ec.ECDSA(hash_cls()))
    except InvalidSignature:
        return False
    return True


def tbs_digest(msg: Sign1) -> str:
    """SHA-256 of the Sig_structure: what identifies a COSE-signed piece of evidence."""
    return hashlib.sha256(msg.to_be_signed()).hexdigest()
