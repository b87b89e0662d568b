"""Nitro, SGX, CCA, Confidential Space and GCE vTPM verification, against the raw signature
checks of the same evidence.

Per platform, in interleaved rounds: "raw signatures" verifies only the evidence's own
signatures with keys already in hand (Nitro: the COSE ES384; SGX: QE report and quote ECDSA
P-256; CCA: platform and realm ES384; Confidential Space: RS256; GCE: three RSA quotes), the
floor any verifier pays; "cold" forgets every memoised certificate parse, chain verdict and
collateral signature first (a verifier seeing this platform once); "cached" is a long-running
verifier seeing it again. CCA has nothing to cache (its CPAK is a given key, with no chain);
Confidential Space caches only the parsed JWKS.

Each row runs for MEDCLAVE_BENCH_TEES_SECONDS (default 0.3) per round, MEDCLAVE_BENCH_ROUNDS
rounds (benchmarks._common). Short mode: MEDCLAVE_BENCH_TEES_SECONDS=0.05.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from benchmarks._common import Report, env_float, interleave, rate_for, vectors_dir
from medclave.attestation import cca, cose, nitro, sgx
from medclave.attestation.cca import abi as cca_abi
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.dcap import verify as dcap_verify
from medclave.attestation.gcp import cs, tpm
from medclave.attestation.nitro import abi as nitro_abi
from medclave.attestation.sgx import abi as sgx_abi
from medclave.attestation.vtpm import tpm2
from medclave.attestation.x509chain import clear_chain_cache, load_certificates
from medclave.crypto import jose

Case = tuple[Callable[[], object], Callable[[], object], Callable[[], None]]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _nitro(v: Path) -> Case:
    doc = (v / "nitro/evervault/valid-attestation-doc-bytes").read_bytes()
    opts = VerifyOptions(now=_at("2022-10-13T09:30:00"))
    parsed = nitro_abi.parse_document(doc)
    key = load_certificates(parsed.certificate)[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)

    def raw() -> None:
        assert cose.signature_ok(parsed.sign1, key, alg=cose.ES384)

    return raw, lambda: nitro.verify(doc, opts), clear_chain_cache


def _sgx(v: Path) -> Case:
    quote = (v / "sgx/dcap-qvl/sgx_quote").read_bytes()
    coll = (v / "sgx/dcap-qvl/sgx_quote_collateral.json").read_bytes()
    opts = VerifyOptions(now=_at("2025-07-01T00:00:00"),
                         endorsements=Endorsements(collateral=(coll,)))
    q = sgx_abi.parse_quote(quote)
    leaf = dcap_verify.pck_chain(q)[0].public_key()
    att = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + q.attestation_key)

    def raw() -> None:
        assert dcap_verify._ecdsa_ok(leaf, q.qe_report_signature, q.qe_report.raw)
        assert dcap_verify._ecdsa_ok(att, q.signature, q.signed)

    return raw, lambda: sgx.verify(quote, opts), dcap_verify.clear_caches


def _cca(v: Path) -> Case:
    token = (v / "cca/trustee/cca-example-token.cbor").read_bytes()
    pem = (v / "cca/ccatoken/cca_platform.pub").read_bytes()
    rv = (v / "cca/trustee/rvstore.json").read_bytes()
    opts = VerifyOptions(now=_at("2026-01-01T00:00:00"),
                         endorsements=Endorsements(keys=(pem,), collateral=(rv,)))
    t = cca_abi.parse_token(token)
    cpak = load_pem_public_key(pem)
    rak = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), t.rak)
    assert isinstance(cpak, ec.EllipticCurvePublicKey)

    def raw() -> None:
        assert cose.signature_ok(t.platform, cpak, alg=cose.ES384)
        assert cose.signature_ok(t.realm, rak, alg=cose.ES384)

    return raw, lambda: cca.verify(token, opts), lambda: None


def _gcp_cs(v: Path) -> Case:
    folder = v / "gcp-confidential-space/atlas-pca"
    token = (folder / "prod-token.jwt").read_bytes()
    jwks = (folder / "google-cs-jwks.json").read_bytes()
    opts = VerifyOptions(now=_at("2026-10-08T22:30:00"), endorsements=Endorsements(keys=(jwks,)))
    head, body, sig = token.strip().split(b".")
    signature = base64.urlsafe_b64decode(sig + b"=" * (-len(sig) % 4))
    key = next(jose.parse_jwk(k, errors=jose.CRYPTO_ERRORS)
               for k in json.loads(jwks)["keys"]
               if k["kid"].startswith("1be6ff72")).key
    assert isinstance(key, rsa.RSAPublicKey)

    def raw() -> None:
        key.verify(signature, head + b"." + body, padding.PKCS1v15(), hashes.SHA256())

    return raw, lambda: cs.verify(token, opts), cs.clear_cache


def _gce(v: Path) -> Case:
    folder = v / "gcp-confidential-space/go-tpm-tools"
    data = (folder / "gce-cos-85-nonce9009.pb").read_bytes()
    certs = tuple(c for f in ("tpm_ek_root_1.cer", "tpm_ek_intermediate_2.crt")
                  for c in load_certificates((folder / f).read_bytes()))
    opts = VerifyOptions(now=_at("2025-01-01T00:00:00"),
                         endorsements=Endorsements(certificates=certs))
    ev = tpm.decode(data)
    key = tpm2.parse_public(ev.ak_pub).key
    assert isinstance(key, rsa.RSAPublicKey)

    def raw() -> None:
        for q in ev.quotes:
            key.verify(q.signature.value, q.message, padding.PKCS1v15(), hashes.SHA256())

    return raw, lambda: tpm.verify(data, opts), clear_chain_cache


CASES: dict[str, Callable[[Path], Case]] = {
    "nitro": _nitro, "sgx": _sgx, "cca": _cca, "gcp-cs": _gcp_cs, "gce-tpm": _gce,
}
NEEDS = {"nitro": "nitro", "sgx": "sgx", "cca": "cca", "gcp-cs": "gcp-confidential-space",
         "gce-tpm": "gcp-confidential-space"}


def main() -> None:
    v = vectors_dir()
    seconds = env_float("MEDCLAVE_BENCH_TEES_SECONDS", 0.3)
    for name, build in CASES.items():
        if not (v / NEEDS[name]).is_dir():
            print(f"skipped {name}: no vectors under {v.name}/{NEEDS[name]} (set MEDCLAVE_VECTORS)")
            continue
        raw, full, clear = build(v)
        full()  # it verifies, or the benchmark stops here

        def cold(full: Callable[[], object] = full, clear: Callable[[], None] = clear) -> None:
            clear()
            full()

        got = interleave({
            "raw": lambda raw=raw: rate_for(raw, seconds),
            "cold": lambda cold=cold: rate_for(cold, seconds),
            "cached": lambda full=full: rate_for(full, seconds),
        })
        report = Report(f"attestation_tees:{name}",
                        f"{name} verification, {seconds:g} s per row per round")
        report.baseline("raw signatures only", got["raw"], "/s")
        report.row("full verification, cold caches", got["cold"], "/s", baseline=got["raw"])
        report.row("full verification, cached", got["cached"], "/s", baseline=got["raw"])
        report.emit()


if __name__ == "__main__":
    main()
