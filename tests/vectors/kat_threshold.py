"""Vectors for threshold key release: Shamir shares over GF(2^8) in the ``MCS1`` format.

The shares are computed here from the written definition (``crypto/shamir.py``; the field of
FIPS-197 §4.2), with a carry-less product reduced by polynomial long division, a different
algorithm from the library's shift-and-add, and only then compared with the library.
"""

from __future__ import annotations

import hashlib

from tests.vectors._kat import GENERATOR, Vector, agree, vector

SECRET = bytes.fromhex("6d55c8e82e198caf3cdc91129b49eb6f7efc5ae09df77655f3cb3688fdf0de77")
SPLIT_ID = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
# The coefficients, drawn once from os.urandom and frozen: byte i uses
# COEFFICIENTS[i*(k-1) : (i+1)*(k-1)] for x^1 .. x^(k-1).
COEFFICIENTS = hashlib.sha512(b"medclave threshold kat coefficients").digest()


def _clmul(a: int, b: int) -> int:
    out = 0
    for bit in range(8):
        if (b >> bit) & 1:
            out ^= a << bit
    return out


def _reduce(value: int) -> int:
    for bit in range(14, 7, -1):  # long division by x^8 + x^4 + x^3 + x + 1
        if (value >> bit) & 1:
            value ^= 0x11B << (bit - 8)
    return value


def _mul(a: int, b: int) -> int:
    return _reduce(_clmul(a, b))


def _power(x: int, e: int) -> int:
    out = 1
    for _ in range(e):
        out = _mul(out, x)
    return out


def _shares(secret: bytes, k: int, n: int) -> list[bytes]:
    coefficients = COEFFICIENTS[: len(secret) * (k - 1)]
    out = []
    for x in range(1, n + 1):
        y = bytearray()
        for i, s in enumerate(secret):
            value = s
            for j in range(1, k):  # sum of a_j * x^j, term by term (no Horner)
                value ^= _mul(coefficients[i * (k - 1) + j - 1], _power(x, j))
            y.append(value)
        out.append(b"MCS1" + SPLIT_ID + bytes((k, x)) + bytes(y))
    return out


def _case(name: str, secret: bytes, k: int, n: int) -> Vector:
    from medclave.crypto import shamir

    spec = _shares(secret, k, n)
    stream = iter((SPLIT_ID, COEFFICIENTS[: len(secret) * (k - 1)]))
    library = [s.encode() for s in shamir.split(secret, k, n, random=lambda _n: next(stream))]
    agree(f"{name}: shares", spec, library)
    return {"name": name, "secret_hex": secret.hex(), "threshold": k, "count": n,
            "split_id_hex": SPLIT_ID.hex(),
            "coefficients_hex": COEFFICIENTS[: len(secret) * (k - 1)].hex(),
            "shares_hex": [s.hex() for s in spec]}


@vector("threshold_share.json")
def threshold_share() -> Vector:
    # FIPS-197 §4.2's worked examples pin the field before any share is computed.
    agree("FIPS-197 {57}.{83}", 0xC1, _mul(0x57, 0x83))
    agree("FIPS-197 {57}.{13}", 0xFE, _mul(0x57, 0x13))
    return {
        "description": "Shamir shares over GF(2^8) (AES polynomial 0x11B), format "
                       "'MCS1' || split_id(16) || k(1) || x(1) || y; y_i = s_i + sum_j a_ij x^j",
        "generator": GENERATOR,
        "cases": [_case("model_key_2_of_3", SECRET, 2, 3),
                  _case("model_key_3_of_5", SECRET, 3, 5),
                  _case("one_byte_2_of_2", b"\x00", 2, 2)],
    }
