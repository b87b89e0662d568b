"""Arm CCA attestation tokens, bytes to claims (no cryptography).

Arm "Realm Management Monitor specification" (DEN0137) A7.2 and the CCA Security Model (DEN0096)
/ IETF draft-ffm-rats-cca-token: the token is a CBOR map under tag 399 (the CCA token
collection) holding two bstr-wrapped COSE_Sign1 messages, 44234 the platform token (signed by
the CPAK) and 44241 the realm token (signed by the RAK it carries). Claim keys:

- platform: 265 profile, 10 challenge (= hash of the RAK), 2396 implementation id, 256 instance
  id, 2401 configuration, 2395 lifecycle, 2402 hash algorithm, 2400 verification service,
  2399 software components (each {1 type, 2 measurement, 4 version, 5 signer id, 6 hash alg});
- realm: 10 challenge (64 bytes), 44235 personalization value (64), 44238 initial measurement,
  44239 extensible measurements (4), 44236 measurement hash algorithm, 44237 RAK public key (a
  raw EC point, or a COSE_Key in later profiles, refused here), 44240 RAK hash algorithm.

Every claim's type and size is checked; unknown claims are ignored (the profile may add some).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medclave.attestation import cose
from medclave.errors import AttestationError

TAG_CCA_TOKEN = 399
KEY_PLATFORM, KEY_REALM = 44234, 44241
MAX_TOKEN_BYTES = 32 * 1024
MAX_SW_COMPONENTS = 32
HASH_SIZES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}
_PREFIX = bytes.fromhex("d9018f")


def _bad(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", f"CCA token: {detail}")


@dataclass(frozen=True)
class Token:
    platform: cose.Sign1
    realm: cose.Sign1
    platform_claims: dict[str, Any]
    realm_claims: dict[str, Any]
    rak: bytes  # the RAK claim's bytes: what the platform challenge hashes

    def signed(self) -> bytes:
        """Both Sig_structures: the bytes that identify the token."""
        return self.platform.to_be_signed() + self.realm.to_be_signed()


def looks_like_token(data: bytes) -> bool:
    return data.startswith(_PREFIX) and len(data) <= MAX_TOKEN_BYTES


def _bytes(claims: dict[Any, Any], key: int, what: str, sizes: tuple[int, ...]) -> bytes:
    value = claims.get(key)
    if not isinstance(value, bytes) or len(value) not in sizes:
        raise _bad(f"{what} ({key}) is not {'/'.join(map(str, sizes))} bytes")
    return value


def _text(claims: dict[Any, Any], key: int, what: str, required: bool = True) -> str | None:
    value = claims.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise _bad(f"{what} ({key}) is not a short string")
    return value


def _hash_alg(claims: dict[Any, Any], key: int, what: str) -> str:
    value = _text(claims, key, what)
    if value not in HASH_SIZES:
        raise _bad(f"{what} {value!r} is not sha-256/384/512")
    return str(value)


def _component(item: Any, n: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(f"software component {n} is not a map")
    measurement = item.get(2)
    signer = item.get(5)
    if not isinstance(measurement, bytes) or not 32 <= len(measurement) <= 64:
        raise _bad(f"software component {n} has no measurement")
    if signer is not None and (not isinstance(signer, bytes) or len(signer) > 64):
        raise _bad(f"software component {n} signer id is not bytes")
    out: dict[str, Any] = {"measurement": measurement.hex(),
                           "signer_id": None if signer is None else signer.hex()}
    for key, name in ((1, "type"), (4, "version"), (6, "hash_algorithm")):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 64):
            raise _bad(f"software component {n} {name} is not a short string")
        out[name] = value
    return out


def _platform(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise _bad("the platform token payload is not a map")
    lifecycle = payload.get(2395)
    if type(lifecycle) is not int or not 0 <= lifecycle <= 0xFFFF:
        raise _bad("lifecycle (2395) is not a 16-bit integer")
    components = payload.get(2399)
    if not isinstance(components, list) or not 1 <= len(components) <= MAX_SW_COMPONENTS:
        raise _bad(f"software components (2399) are not 1..{MAX_SW_COMPONENTS} entries")
    config = payload.get(2401)
    if not isinstance(config, bytes) or len(config) > 4096:
        raise _bad("configuration (2401) is not bytes")
    return {
        "profile": _text(payload, 265, "profile", required=False),
        "challenge": _bytes(payload, 10, "challenge", (32, 48, 64)).hex(),
        "implementation_id": _bytes(payload, 2396, "implementation id", (32,)).hex(),
        "instance_id": _bytes(payload, 256, "instance id", (33,)).hex(),
        "config": config.hex(),
        "lifecycle": lifecycle,
        "lifecycle_state": lifecycle_state(lifecycle),
        "hash_algorithm": _hash_alg(payload, 2402, "hash algorithm"),
        "verification_service": _text(payload, 2400, "verification service", required=False),
        "sw_components": [_component(c, n) for n, c in enumerate(components)],
    }


def _realm(payload: Any) -> tuple[dict[str, Any], bytes]:
    if not isinstance(payload, dict):
        raise _bad("the realm token payload is not a map")
    rak = payload.get(44237)
    if not isinstance(rak, bytes) or len(rak) != 97 or rak[0] != 0x04:
        raise _bad("the RAK (44237) is not an uncompressed P-384 point")
    rems = payload.get(44239)
    if not isinstance(rems, list) or len(rems) != 4:
        raise _bad("extensible measurements (44239) are not 4 entries")
    alg = _hash_alg(payload, 44236, "measurement hash algorithm")
    size = HASH_SIZES[alg]
    sizes = (size, 64)  # RMM pads every measurement to 64 bytes
    rim = _bytes(payload, 44238, "initial measurement", sizes)
    rem_values = []
    for n, rem in enumerate(rems):
        if not isinstance(rem, bytes) or len(rem) not in sizes:
            raise _bad(f"extensible measurement {n} has the wrong size")
        rem_values.append(rem.hex())
    claims = {
        "profile": _text(payload, 265, "profile", required=False),
        "challenge": _bytes(payload, 10, "challenge", (64,)).hex(),
        "personalization_value": _bytes(payload, 44235, "personalization value", (64,)).hex(),
        "initial_measurement": rim.hex(),
        "extensible_measurements": rem_values,
        "hash_algorithm": alg,
        "public_key": rak.hex(),
        "public_key_hash_algorithm": _hash_alg(payload, 44240, "RAK hash algorithm"),
    }
    return claims, rak


def lifecycle_state(lifecycle: int) -> str:
    """PSA lifecycle (PSA Security Model §5.2.1), by the high byte."""
    return {0x0: "unknown", 0x10: "assembly-and-test", 0x20: "psa-rot-provisioning",
            0x30: "secured", 0x40: "non-psa-rot-debug", 0x50: "recoverable-psa-rot-debug",
            0x60: "decommissioned"}.get(lifecycle >> 8, "invalid")


def parse_token(data: bytes) -> Token:
    value = cose.loads(data, what="CCA token", tags=frozenset({TAG_CCA_TOKEN}),
                       maximum=MAX_TOKEN_BYTES)
    if not hasattr(value, "tag") or value.tag != TAG_CCA_TOKEN or not isinstance(value.value, dict):
        raise _bad("not a tag-399 CCA token collection")
    collection = value.value
    if set(collection) != {KEY_PLATFORM, KEY_REALM}:
        raise _bad("the collection is not exactly the platform (44234) and realm (44241) tokens")
    messages = []
    for key, what in ((KEY_PLATFORM, "platform token"), (KEY_REALM, "realm token")):
        blob = collection[key]
        if not isinstance(blob, bytes):
            raise _bad(f"the {what} is not a bstr-wrapped COSE_Sign1")
        messages.append(cose.decode_sign1(blob, what=what, maximum=MAX_TOKEN_BYTES))
    platform_msg, realm_msg = messages
    platform = _platform(cose.loads(platform_msg.payload, what="platform claims"))
    realm, rak = _realm(cose.loads(realm_msg.payload, what="realm claims"))
    return Token(platform_msg, realm_msg, platform, realm, rak)
