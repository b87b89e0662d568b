"""TDX quote verification with full collateral (the dcap-qvl T7 vector): cached vs cold.

"cold" forgets every memoised parse and signature before each verification (a verifier that
sees each quote and collateral bundle once); "cached" is a long-running verifier seeing the same
platform's PCK chain and collateral again. Both run every signature and time check on the quote.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from benchmarks._common import vectors_dir
from medclave.attestation import tdx
from medclave.attestation.core import Endorsements, VerifyOptions


def _rate(fn: Callable[[], object], seconds: float = 1.5) -> tuple[float, int]:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < 20:
        fn()
        count += 1
    return count / elapsed, count


def main() -> None:
    folder = vectors_dir() / "tdx" / "dcap-qvl"
    if not folder.is_dir():
        print(f"skipped: no TDX vectors under {folder.parent.parent.name}/ (set MEDCLAVE_VECTORS)")
        return
    quote = (folder / "tdx_quote").read_bytes()
    bundle = (folder / "tdx_quote_collateral.json").read_bytes()
    now = datetime(2025, 7, 1, 12, tzinfo=UTC)
    with_collateral = VerifyOptions(now=now, endorsements=Endorsements(collateral=(bundle,)))
    bare = VerifyOptions(now=now)
    assert tdx.verify(quote, with_collateral).tcb_status == "UpToDate"

    def cold() -> None:
        tdx.clear_caches()
        tdx.verify(quote, with_collateral)

    rows = [
        ("collateral, cold caches (baseline)", *_rate(cold)),
        ("collateral, cached", *_rate(lambda: tdx.verify(quote, with_collateral))),
        ("no collateral, cached", *_rate(lambda: tdx.verify(quote, bare))),
    ]
    base = rows[0][1]
    title = "TDX quote verification (T7)"
    print(f"{title:<38} {'verif/s':>9} {'ms each':>8} {'n':>6} {'ratio':>6}")
    for name, rate, n in rows:
        print(f"{name:<38} {rate:>9.0f} {1000 / rate:>8.2f} {n:>6} {rate / base:>5.2f}x")


if __name__ == "__main__":
    main()
