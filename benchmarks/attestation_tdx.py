"""TDX quote verification with full collateral (the dcap-qvl T7 vector): cached vs cold.

"cold" forgets every memoised parse and signature before each verification (a verifier that
sees each quote and collateral bundle once); "cached" is a long-running verifier seeing the same
platform's PCK chain and collateral again. Both run every signature and time check on the quote.

Goal: cached verification with collateral >= 200/s. Each row runs for MEDCLAVE_BENCH_TDX_SECONDS
(default 0.5) per round; the rows alternate in MEDCLAVE_BENCH_ROUNDS rounds (benchmarks._common).
"""

from __future__ import annotations

from datetime import UTC, datetime

from benchmarks._common import Goal, Report, env_float, interleave, rate_for, vectors_dir
from medclave.attestation import tdx
from medclave.attestation.core import Endorsements, VerifyOptions

GOAL = 200.0


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

    seconds = env_float("MEDCLAVE_BENCH_TDX_SECONDS", 0.5)
    got = interleave({
        "cold": lambda: rate_for(cold, seconds),
        "cached": lambda: rate_for(lambda: tdx.verify(quote, with_collateral), seconds),
        "bare": lambda: rate_for(lambda: tdx.verify(quote, bare), seconds),
    })
    report = Report("attestation_tdx", f"TDX quote verification (T7), {seconds:g} s per row "
                    "per round")
    report.baseline("collateral, cold caches", got["cold"], "/s")
    report.row("collateral, cached", got["cached"], "/s", baseline=got["cold"],
               goal=Goal(">=", GOAL))
    report.row("no collateral, cached", got["bare"], "/s", baseline=got["cold"])
    report.emit()

if __name__ == "__main__":
    main()
