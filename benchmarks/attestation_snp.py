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
../shared/vectors. Iterations: MEDCLAVE_BENCH_SNP_N (default 1000).
"""

from __future__ import annotations

import os
import warnings
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from benchmarks._common import rate, vectors_dir
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
    n = int(os.environ.get("MEDCLAVE_BENCH_SNP_N", "1000"))
    data = (root / "trustee/test-report.bin").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        certs = tuple(load_certificates((root / "trustee/test-vcek.der").read_bytes())
                      + load_certificates((root / "amd-roots/ask_ark_milan.pem").read_bytes()))
    options = VerifyOptions(now=NOW, endorsements=Endorsements(certificates=certs))

    report = abi.parse_report(data)
    key = certs[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signature = encode_dss_signature(*report.signature_rs)

    def raw_ecdsa() -> None:
        key.verify(signature, data[:abi.SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))

    def uncached() -> None:
        sevsnp.clear_chain_cache()
        sevsnp.verify(data, options)

    rows = [
        ("raw ECDSA (baseline)", rate(raw_ecdsa, n)),
        ("parse only", rate(lambda: sevsnp.parse(data), n)),
        ("uncached chain", rate(uncached, max(n // 4, 1))),
        ("cached chain", rate(lambda: sevsnp.verify(data, options), n)),
    ]
    base = rows[0][1]
    print(f"{'SNP verification (S3, Milan)':<30} {'ops/s':>10} {'vs raw ECDSA':>13}")
    for name, per_second in rows:
        print(f"{name:<30} {per_second:>10.0f} {per_second / base:>12.2f}x")
    cached = rows[-1][1]
    print(f"cached / uncached: {cached / rows[2][1]:.2f}x; goal >= {GOAL:.0f}/s: "
          f"{'met' if cached >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
