"""NVIDIA H100 evidence verification rate: with the device chain cached against verified fresh.

Rows, all on the real N1 report and its five-certificate chain, measured in the same run:
  uncached chain   every verification walks the chain (4 ECDSA P-384 certificate signatures)
                   plus the SPDM signature: the baseline
  cached chain     the chain verified once, then only its validity window is checked: the rate a
                   relying party sees for repeated evidence from the same GPU
  parse only       decode and parse, no cryptography: the ceiling
  + 2 RIMs         cached chain plus a driver and a VBIOS RIM (XML-DSig each, at a pinned time;
                   refused as not matching N1, which is the work a real appraisal does too)

Vectors: MEDCLAVE_VECTORS or ../shared/vectors. Iterations per round: MEDCLAVE_BENCH_NVIDIA_N
(default 200; a quarter for the RIM row); the rows alternate in MEDCLAVE_BENCH_ROUNDS rounds.
"""

from __future__ import annotations

from datetime import UTC, datetime

from benchmarks._common import Report, env_int, interleave, rate, vectors_dir
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.nvidia import abi
from medclave.attestation.nvidia.verify import ChainCache, verify_report
from medclave.attestation.x509chain import load_certificates
from medclave.errors import AttestationError

NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)  # every sample RIM signer is valid then


def main() -> None:
    root = vectors_dir() / "nvidia" / "nvtrust"
    if not root.is_dir():
        print(f"skipped: NVIDIA vectors not found under {root} (set MEDCLAVE_VECTORS)")
        return
    n = env_int("MEDCLAVE_BENCH_NVIDIA_N", 200)
    report_bytes = (root / "hopperAttestationReport.txt").read_bytes()
    chain = tuple(load_certificates((root / "hopperCertChain.txt").read_bytes()))
    options = VerifyOptions(now=NOW, endorsements=Endorsements(certificates=chain))
    rims = tuple((root / "rims" / name).read_bytes() for name in
                 ("Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_PROD.swidtag"))
    with_rims = VerifyOptions(now=NOW, endorsements=Endorsements(certificates=chain,
                                                                  collateral=rims))
    cache = ChainCache()

    def appraise_with_rims() -> None:
        try:
            verify_report(report_bytes, with_rims, chain_cache=cache)
        except AttestationError as exc:
            if exc.code != "attestation.measurement_mismatch":
                raise

    def uncached() -> None:
        verify_report(report_bytes, options, chain_cache=None)

    def cached() -> None:
        verify_report(report_bytes, options, chain_cache=cache)

    def parse() -> None:
        abi.report_claims(abi.parse_report(report_bytes))

    report = Report("attestation_nvidia", f"NVIDIA H100 verification (N1), n={n} per round")
    got = interleave({
        "uncached": lambda: rate(uncached, n),
        "cached": lambda: rate(cached, n),
        "parse": lambda: rate(parse, n),
        "rims": lambda: rate(appraise_with_rims, max(n // 4, 10)),
    })
    base = got["uncached"]
    report.baseline("uncached chain", base, "/s")
    report.row("cached chain", got["cached"], "/s", baseline=base)
    report.row("parse only", got["parse"], "/s", baseline=base)
    report.row("+ 2 RIMs (cached chain)", got["rims"], "/s", baseline=base)
    report.emit()


if __name__ == "__main__":
    main()
