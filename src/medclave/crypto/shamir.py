"""Shamir secret sharing (Shamir, "How to share a secret", CACM 1979) over GF(2^8), byte by byte.

Every byte of the secret is the constant term of its own random polynomial of degree k-1 over
GF(2^8) (the AES field, reduction polynomial x^8 + x^4 + x^3 + x + 1, FIPS-197 §4.2); share x
(1..255) holds that polynomial's value at x for every byte. Any k shares give the secret by
Lagrange interpolation at 0; any k-1 shares are uniformly distributed whatever the secret
(for every candidate secret exactly one polynomial through the k-1 points exists), so they
reveal nothing: a broker holding one share learns nothing about the model key.

Why by hand: the well-kept library in reach (PyCryptodome's ``Crypto.Protocol.SecretSharing``)
shares only 16-byte secrets over GF(2^128), and is not one of our declared dependencies; a
byte-wise GF(2^8) scheme shares secrets of any length (a 32-byte model key, any broker secret),
is the construction HashiCorp Vault and SLIP-39 use, and is small enough that the test suite
checks its "k-1 shares reveal nothing" property exhaustively over the whole field.

Multiplication is shift-and-add without lookup tables (no secret-indexed memory access);
Python gives no constant-time guarantee beyond that, which is acceptable here: sharing runs
on the owner's machine and combination inside the enclave.

Share format (version 1, ``MCS1``; a committed known-answer vector pins it)::

    "MCS1" || split_id (16) || threshold k (1) || index x (1) || y (len(secret))

``split_id`` is random per split, so shares of two splits cannot be mixed unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medclave.errors import CryptoError, InputError

MAGIC = b"MCS1"
SPLIT_ID_BYTES = 16
HEADER_BYTES = len(MAGIC) + SPLIT_ID_BYTES + 2
MAX_SECRET_BYTES = 64 * 1024
MAX_SHARES = 255
_POLY = 0x11B  # x^8 + x^4 + x^3 + x + 1 (FIPS-197 §4.2)


def gf_mul(a: int, b: int) -> int:
    """a·b in GF(2^8): shift-and-add with reduction by the AES polynomial."""
    product = 0
    for _ in range(8):
        product ^= a & -(b & 1)  # add a when b's low bit is set, without a branch on it
        b >>= 1
        carry = -((a >> 7) & 1)
        a = ((a << 1) ^ (_POLY & carry)) & 0xFF
    return product


def gf_inv(a: int) -> int:
    """a^-1 = a^254 in GF(2^8) (the multiplicative group has order 255)."""
    if a == 0:
        raise CryptoError("crypto.share_invalid", "zero has no inverse")
    result, base, exponent = 1, a, 254
    while exponent:
        if exponent & 1:
            result = gf_mul(result, base)
        base = gf_mul(base, base)
        exponent >>= 1
    return result


@dataclass(frozen=True)
class Share:
    split_id: bytes
    threshold: int
    index: int
    value: bytes

    def encode(self) -> bytes:
        return MAGIC + self.split_id + bytes((self.threshold, self.index)) + self.value

    @classmethod
    def decode(cls, data: bytes) -> Share:
        """Parse one share (bounded; anything malformed is ``crypto.share_invalid``)."""
        if not HEADER_BYTES < len(data) <= HEADER_BYTES + MAX_SECRET_BYTES:
            raise CryptoError("crypto.share_invalid", "a share has the wrong length")
        if data[: len(MAGIC)] != MAGIC:
            raise CryptoError("crypto.share_invalid", "not a version-1 share")
        split_id = data[len(MAGIC): len(MAGIC) + SPLIT_ID_BYTES]
        threshold, index = data[HEADER_BYTES - 2], data[HEADER_BYTES - 1]
        if not 2 <= threshold <= MAX_SHARES or index == 0:
            raise CryptoError("crypto.share_invalid", "threshold or index out of range")
        return cls(bytes(split_id), threshold, index, bytes(data[HEADER_BYTES:]))


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's rule; coefficients[0] is the constant term."""
    y = 0
    for c in reversed(coefficients):
        y = gf_mul(y, x) ^ c
    return y


def split(secret: bytes, threshold: int, count: int, *,
          random: Callable[[int], bytes] = os.urandom) -> list[Share]:
    """``count`` shares of ``secret``, any ``threshold`` of which recover it.

    ``random`` supplies the split id and then the coefficients (for the known-answer vector
    only; everything else uses the OS generator). Coefficient j (1..k-1) of byte i is
    ``coefficients[i*(k-1) + j-1]``.
    """
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise InputError("input.malformed", f"need 2 <= k <= n <= {MAX_SHARES}")
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise InputError("input.malformed", f"a shared secret is 1 to {MAX_SECRET_BYTES} bytes")
    split_id = random(SPLIT_ID_BYTES)
    degree = threshold - 1
    coefficients = random(len(secret) * degree)
    if len(split_id) != SPLIT_ID_BYTES or len(coefficients) != len(secret) * degree:
        raise CryptoError("crypto.share_invalid", "the random source returned too few bytes")
    polys = [(b, *coefficients[i * degree:(i + 1) * degree]) for i, b in enumerate(secret)]
    return [Share(split_id, threshold, x, bytes(_evaluate(p, x) for p in polys))
            for x in range(1, count + 1)]


def _interpolate(points: Sequence[tuple[int, int]], at: int) -> int:
    """The value at ``at`` of the polynomial through ``points`` (Lagrange; + is - in GF(2^8))."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = gf_mul(numerator, at ^ xj)
                denominator = gf_mul(denominator, xi ^ xj)
        total ^= gf_mul(yi, gf_mul(numerator, gf_inv(denominator)))
    return total


def combine(shares: Sequence[Share]) -> bytes:
    """The secret from at least ``threshold`` shares of one split.

    With more than ``threshold`` shares, every extra share must lie on the polynomial the
    first ``threshold`` define: a wrong share is refused, never silently outvoted.
    """
    if not shares:
        raise CryptoError("crypto.share_invalid", "no shares")
    first = shares[0]
    for s in shares:
        if (s.split_id, s.threshold, len(s.value)) != (first.split_id, first.threshold,
                                                       len(first.value)):
            raise CryptoError("crypto.share_invalid", "shares of different splits")
    if len({s.index for s in shares}) != len(shares):
        raise CryptoError("crypto.share_invalid", "two shares have the same index")
    if len(shares) < first.threshold:
        raise CryptoError("crypto.share_invalid",
                          f"{len(shares)} shares, {first.threshold} needed")
    base, extra = shares[: first.threshold], shares[first.threshold:]
    secret = bytearray()
    for i in range(len(first.value)):
        points = [(s.index, s.value[i]) for s in base]
        secret.append(_interpolate(points, 0))
        for s in extra:
            if _interpolate(points, s.index) != s.value[i]:
                raise CryptoError("crypto.share_invalid", "a share does not fit the others")
    return bytes(secret)
