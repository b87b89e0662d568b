"""Shamir sharing over GF(2^8): the field against FIPS-197, the committed known answers, the
"k-1 shares reveal nothing" property checked exhaustively, and the share parser fuzzed."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.crypto import shamir
from medclave.errors import CryptoError, InputError, MedclaveError
from tests.conftest import flip

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "threshold_share.json").read_text())


# --- the field --------------------------------------------------------------------------------


def test_field_matches_fips197_worked_examples() -> None:
    assert shamir.gf_mul(0x57, 0x83) == 0xC1  # FIPS-197 §4.2
    assert shamir.gf_mul(0x57, 0x13) == 0xFE  # FIPS-197 §4.2.1
    assert shamir.gf_mul(0x53, 0xCA) == 0x01  # the S-box derivation's inverse pair


def test_every_nonzero_element_has_its_inverse() -> None:
    for a in range(1, 256):
        assert shamir.gf_mul(a, shamir.gf_inv(a)) == 1
    with pytest.raises(CryptoError):
        shamir.gf_inv(0)


# --- known answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_known_answer_shares(case: dict[str, Any]) -> None:
    secret = bytes.fromhex(case["secret_hex"])
    stream = iter((bytes.fromhex(case["split_id_hex"]), bytes.fromhex(case["coefficients_hex"])))
    made = shamir.split(secret, case["threshold"], case["count"], random=lambda _n: next(stream))
    assert [s.encode().hex() for s in made] == case["shares_hex"]
    shares = [shamir.Share.decode(bytes.fromhex(h)) for h in case["shares_hex"]]
    for subset in itertools.combinations(shares, case["threshold"]):
        assert shamir.combine(list(subset)) == secret
    # Negative twins: one flipped bit in any y byte gives another secret (or, with an extra
    # share, a refusal); a flipped header byte is refused or changes the split.
    first = bytes.fromhex(case["shares_hex"][0])
    rest = shares[1: case["threshold"]]
    for offset in range(shamir.HEADER_BYTES, len(first)):
        bad = shamir.Share.decode(flip(first, offset))
        assert shamir.combine([bad, *rest]) != secret
        if len(shares) > case["threshold"]:
            with pytest.raises(CryptoError):
                shamir.combine([bad, *shares[1:]])
    for offset in range(shamir.HEADER_BYTES):
        try:
            bad = shamir.Share.decode(flip(first, offset))
        except CryptoError:
            continue
        with pytest.raises(CryptoError):
            shamir.combine([bad, *rest])


# --- k-1 shares reveal nothing ------------------------------------------------------------------


def _evaluate(secret: int, coefficients: tuple[int, ...], x: int) -> int:
    return shamir.Share.decode(
        shamir.split(bytes([secret]), len(coefficients) + 1, x,
                     random=_fixed(coefficients)).pop().encode()).value[0]


def _fixed(coefficients: tuple[int, ...]) -> Any:
    stream = iter((b"\x00" * 16, bytes(coefficients)))
    return lambda _n: next(stream)


def test_one_share_of_2_of_n_is_uniform_whatever_the_secret() -> None:
    """For k=2 a share is s + a·x: over the 256 equally likely a, every value occurs exactly
    once for every secret s and every x, so the share says nothing about s."""
    for x in (1, 2, 3, 255):
        for secret in range(256):
            seen = Counter(shamir.gf_mul(a, x) ^ secret for a in range(256))
            assert len(seen) == 256 and set(seen.values()) == {1}
    # The library's split agrees with that formula (so the property is the library's).
    assert all(_evaluate(s, (a,), 3) == shamir.gf_mul(a, 3) ^ s
               for s in (0, 0x5A, 0xFF) for a in range(256))


def test_two_shares_of_3_of_n_are_uniform_whatever_the_secret() -> None:
    """For k=3, shares (x=1, x=2) over all 65536 coefficient pairs hit every pair of values
    exactly once, for each secret tried: two shares are independent of the secret."""
    for secret in (0x00, 0xC3):
        pairs = set()
        for a1 in range(256):
            for a2 in range(256):
                y1 = secret ^ a1 ^ a2  # x = 1
                y2 = secret ^ shamir.gf_mul(a1, 2) ^ shamir.gf_mul(a2, 4)  # x = 2, x^2 = 4
                pairs.add((y1, y2))
        assert len(pairs) == 65536


def test_k_minus_one_shares_fit_every_candidate_secret() -> None:
    """Given k-1 real shares, every candidate secret is consistent with them (a polynomial of
    degree k-1 passes through the k-1 points and (0, candidate))."""
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, 5)
    held = shares[:2]
    for candidate in (b"\x00" * 32, b"\xff" * 32, secret):
        fake_zero = shamir.Share(held[0].split_id, 3, 0, candidate)
        points = [*held, fake_zero]
        # the polynomial through the 3 points; its value at x=0 is the candidate by design
        for i in range(32):
            assert shamir._interpolate([(p.index, p.value[i]) for p in points], 0) == candidate[i]
    with pytest.raises(CryptoError):
        shamir.combine(held)


# --- round trips and refusals ----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=1, max_size=48), k=st.integers(2, 5), extra=st.integers(0, 3),
       data=st.data())
def test_any_k_shares_recover_and_fewer_do_not(secret: bytes, k: int, extra: int,
                                               data: st.DataObject) -> None:
    shares = shamir.split(secret, k, k + extra)
    chosen = data.draw(st.permutations(shares))[:k]
    assert shamir.combine(chosen) == secret
    assert shamir.combine(shares) == secret  # all of them: the extras must agree
    with pytest.raises(CryptoError):
        shamir.combine(chosen[: k - 1])


def test_mixed_splits_and_duplicates_are_refused() -> None:
    a, b = shamir.split(b"k" * 32, 2, 3), shamir.split(b"k" * 32, 2, 3)
    with pytest.raises(CryptoError):
        shamir.combine([a[0], b[1]])
    with pytest.raises(CryptoError):
        shamir.combine([a[0], a[0]])
    with pytest.raises(CryptoError):
        shamir.combine([])


@pytest.mark.parametrize(("k", "n", "size"), [(1, 3, 32), (3, 2, 32), (2, 256, 32), (2, 3, 0)])
def test_split_refuses_bad_parameters(k: int, n: int, size: int) -> None:
    with pytest.raises(InputError):
        shamir.split(b"x" * size, k, n)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_share_parser_is_bounded_and_fails_closed(data: bytes) -> None:
    try:
        share = shamir.Share.decode(data)
    except MedclaveError as exc:
        assert exc.code == "crypto.share_invalid"
        return
    assert share.encode() == data


def test_oversized_share_is_refused() -> None:
    big = shamir.MAGIC + b"\x00" * 16 + b"\x02\x01" + b"\x00" * (shamir.MAX_SECRET_BYTES + 1)
    with pytest.raises(CryptoError):
        shamir.Share.decode(big)
