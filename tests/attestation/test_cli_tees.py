"""``medclave attest verify`` on the Nitro, SGX, CCA, Confidential Space and GCE vectors: the
same command, JSON and exit codes as every platform (0 accepted, 1 refused, 2 unusable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from medclave.cli.main import app
from tests.conftest import flip

runner = CliRunner()
KEYS = {"platform", "verified", "checks", "claims", "tcb_status", "error"}


def run(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["attest", "verify", *args, "--json"])
    out = json.loads(result.stdout)
    assert out.keys() >= KEYS
    return result.exit_code, out


def test_nitro(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "nitro/evervault"
    code, out = run(str(d / "valid-attestation-doc-bytes"), "--at", "2022-10-13T09:30:00Z")
    assert code == 0 and out["platform"] == "nitro" and out["claims"]["debug"] is False
    code, out = run(str(d / "debug-mode-attestation-doc-bytes"), "--at", "2022-10-12T14:00:00Z")
    assert code == 1 and out["verified"] is True and out["error"]["code"] == (
        "policy.debug_forbidden")
    code, out = run(str(d / "valid-attestation-doc-bytes"), "--at", "2022-10-13T12:30:00Z")
    assert code == 1 and out["error"]["code"] == "attestation.certificate_expired"
    code, out = run(str(d / "non-debug-cert-containing-attestation-document-18-1-23.pem"),
                    "--at", "2023-01-18T14:00:00Z")
    assert code == 0 and out["checks"][-1]["name"] == "3. TLS key binding"
    tampered = tmp_path / "doc"
    data = (d / "valid-attestation-doc-bytes").read_bytes()
    tampered.write_bytes(flip(data, data.index(b"i-020b6af9246d90e92") + 2))
    code, out = run(str(tampered), "--at", "2022-10-13T09:30:00Z")
    assert code == 1 and out["error"]["code"] == "attestation.signature_invalid"


def test_sgx(vectors: Path) -> None:
    d = vectors / "sgx"
    code, out = run(str(d / "dcap-qvl/sgx_quote"), "--collateral",
                    str(d / "dcap-qvl/sgx_quote_collateral.json"), "--at", "2025-07-01T00:00:00Z")
    assert code == 0 and out["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert out["claims"]["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    a = d / "automata"
    code, out = run(str(a / "quotev3.hex"), *(x for f in (
        "sgx_tcbinfov3_00606a000000.json", "sgx_qeidentity_v4.json", "platform_crl.der",
        "intel_root_ca_crl.der") for x in ("--collateral", str(a / f))),
        "--collateral", str(d / "dcap-qvl/tcb_signing_chain.DERIVED.pem"),
        "--at", "2025-08-20T00:00:00Z")
    assert code == 0 and out["tcb_status"] == "SWHardeningNeeded", out["error"]
    code, out = run(str(a / "quote_sgx.bin"), "--collateral",
                    str(d / "dcap-qvl/sgx_quote_collateral.json"), "--at", "2025-07-01T00:00:00Z")
    assert code == 1 and out["error"]["code"] == "policy.debug_forbidden"
    code, out = run(str(d / "dcap-qvl/sgx_quote"), "--collateral",
                    str(d / "dcap-qvl/sgx_quote_collateral.json"), "--at", "2025-08-01T00:00:00Z")
    assert code == 1 and out["error"]["code"] == "attestation.collateral_invalid"


def test_cca(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "cca"
    token = str(d / "trustee/cca-example-token.cbor")
    code, out = run(token, "--cert", str(d / "trustee/tastore.json"), "--collateral",
                    str(d / "trustee/rvstore.json"))
    assert code == 1 and out["verified"] is True and out["secure"] is False
    assert out["warnings"] and out["error"]["code"] == "policy.platform_not_allowed"
    assert out["checks"][-1]["name"] == "5. reference values" and out["checks"][-1]["ok"]
    code, out = run(token)
    assert code == 2 and out["error"]["code"] == "attestation.certificate_missing"
    # The readable form warns too.
    text = runner.invoke(app, ["attest", "verify", token, "--cert",
                               str(d / "ccatoken/cca_platform.pub")]).stdout
    assert "WARNING" in text and "FVP test CPAK" in text


def test_gcp_confidential_space(vectors: Path) -> None:
    d = vectors / "gcp-confidential-space/atlas-pca"
    jwks = str(d / "google-cs-jwks.json")
    nonce = "8bbd16f5b103edde017ba6f3d953a781165a0d512dc97adaad905321444fad19"
    code, out = run(str(d / "prod-token.jwt"), "--cert", jwks, "--nonce", nonce,
                    "--at", "2026-10-08T22:30:00Z")
    assert code == 0 and out["platform"] == "gcp-cs" and out["tcb_status"] == "UpToDate"
    code, out = run(str(d / "debug-token.jwt"), "--cert", jwks, "--at", "2026-10-08T22:30:00Z")
    assert code == 1 and "policy.debug_forbidden" in {
        v["code"] for v in out["policy"]["violations"]}
    code, out = run(str(d / "prod-token.jwt"), "--cert", jwks, "--at", "2026-10-08T23:00:00Z")
    assert code == 1 and out["error"]["code"] == "attestation.evidence_expired"


def test_gce_vtpm(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "gcp-confidential-space/go-tpm-tools"
    policy = tmp_path / "p.toml"
    policy.write_text('platforms = ["gce-tpm"]\n')
    args = (str(d / "gce-cos-85-nonce9009.pb"), "--cert", str(d / "tpm_ek_root_1.cer"),
            "--cert", str(d / "tpm_ek_intermediate_2.crt"), "--at", "2025-01-01T00:00:00Z")
    code, out = run(*args, "--nonce", "9009", "--policy", str(policy))
    assert code == 0 and out["platform"] == "gce-tpm" and out["claims"]["nonce"] == "9009"
    code, out = run(*args, "--nonce", "9009")  # the default policy does not name it
    assert code == 1 and out["error"]["code"] == "policy.platform_not_allowed"
    code, out = run(*args, "--nonce", "9008", "--policy", str(policy))
    assert code == 1 and out["error"]["code"] == "attestation.nonce_mismatch"
