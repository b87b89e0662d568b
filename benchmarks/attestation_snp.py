"""SEV-SNP verification rate: cached chain against an uncached one and against raw ECDSA.

Rows, all on the real S3 Milan report with its VCEK -> ASK -> ARK chain, in the same run:
  raw ECDSA        the report's P-384 signature alone (cryptography, no parsing): the floor
                   every full verification pays, so the ceiling for it; the baseline
  parse only       decode and structurally check the report, no cryptography
  uncached chain   full ``sevsnp.verify`` with the chain cache cleared before each call: three
                   certificate signatures (two RSA-4096 PSS) plus the report signature
  cached chain     full ``sevsnp.verify`` with the chain verified once and reused (its validity
                   window still checked): what a relying party sees for repeated evidence

Goal: cached chain >= 500 verifications/s on one core. Vectors: MEDCLAVE_VECTORS or
../shared/vectors. Iterations per round: MEDCLAVE_BENCH_SNP_N (default 500; a quarter for the
uncached chain); the four rows alternate in MEDCLAVE_BENCH_ROUNDS rounds (benchmarks._common).
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from benchmarks._common import Goal, Report, env_int, interleave, rate, vectors_dir
from medclave.attestation import sevsnp
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.sevsnp import abi
from medclave.attestation.x509chain import load_certificates

NOW = datetime(2025, 7, 1, 12, tzinfo=UTC)
GOAL = 500.0


def main() -> None:
    root = vectors_dir() / "sev-snp"
    if not root.is_dir():
        print(f"skipped: SNP vectors not found under {root} (set MEDCLAVE_VECTORS)")
        return
    n = env_int("MEDCLAVE_BENCH_SNP_N", 500)
    data = (root / "trustee/test-report.bin").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        certs = tuple(load_certificates((root / "trustee/test-vcek.der").read_bytes())
                      + load_certificates((root / "amd-roots/ask_ark_milan.pem").read_bytes()))
    options = VerifyOptions(now=NOW, endorsements=Endorsements(certificates=certs))

    parsed = abi.parse_report(data)
    key = certs[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signature = encode_dss_signature(*parsed.signature_rs)

    def raw_ecdsa() -> None:
        key.verify(signature, data[:abi.SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))

    def uncached() -> None:
        sevsnp.clear_chain_cache()
        sevsnp.verify(data, options)

    report = Report("attestation_snp", f"SEV-SNP verification (S3, Milan), n={n} per round")
    got = interleave({
        "raw": lambda: rate(raw_ecdsa, n),
        "parse": lambda: rate(lambda: sevsnp.parse(data), n),
        "uncached": lambda: rate(uncached, max(n // 4, 1)),
        "cached": lambda: rate(lambda: sevsnp.verify(data, options), n),
    })
    base = got["raw"]
    report.baseline("raw ECDSA", base, "/s")
    report.row("parse only", got["parse"], "/s", baseline=base)
    report.row("uncached chain", got["uncached"], "/s", baseline=base)
    report.row("cached chain", got["cached"], "/s", baseline=base, goal=Goal(">=", GOAL))
    report.ratio_note("cached / uncached", got["cached"], got["uncached"])
    report.emit()

if __name__ == "__main__":
    main()
