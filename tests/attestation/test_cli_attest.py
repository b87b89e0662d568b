"""``medclave attest verify`` on the real vectors: the exact form, JSON and exit codes scripts use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medclave.attestation import sim
from medclave.cli.main import app
from tests.conftest import flip

runner = CliRunner()
NVIDIA_NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"


def run(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["attest", "verify", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_snp_milan_report_verifies_and_is_accepted(vectors: Path) -> None:
    d = vectors / "sev-snp/virtee-sev"
    code, out = run(str(d / "report_milan.hex"), "--cert", str(d / "vcek_milan.der"),
                    "--cert", str(d / "cert_chain_milan"), "--at", "2025-07-01T00:00:00Z")
    assert code == 0, out["error"]
    assert out["platform"] == "sev-snp" and out["verified"] is True and out["error"] is None
    assert out["claims"]["measurement"].startswith("7a1e5c26")
    assert out["claims"]["reported_tcb_parts"]["snp"] == 8
    assert {c["name"] for c in out["checks"]} >= {"report signature", "reported TCB", "chip id"}
    assert out["tcb_status"] == "unknown" and out["policy"]["accepted"] is True


def test_snp_flipped_byte_is_refused_with_exit_1(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "sev-snp/go-sev-guest"
    bad = tmp_path / "report.bin"
    bad.write_bytes(flip((d / "attestation.bin").read_bytes(), 0x90))
    code, out = run(str(bad), "--cert", str(d / "vcek.testcer"),
                    "--cert", str(vectors / "sev-snp/amd-roots/ask_ark_milan.pem"), "--at", "2025-07-01")
    assert code == 1 and out["verified"] is False
    assert out["error"]["code"] == "attestation.signature_invalid"
    assert out["checks"][-1]["ok"] is False


def test_snp_debug_guest_verifies_but_default_policy_refuses(vectors: Path) -> None:
    d = vectors / "sev-snp/go-sev-guest"
    code, out = run(str(d / "attestation.bin"), "--cert", str(d / "vcek.testcer"),
                    "--cert", str(vectors / "sev-snp/amd-roots/ask_ark_milan.pem"), "--at", "2025-07-01")
    assert code == 1 and out["verified"] is True
    assert out["claims"]["debug"] is True
    assert out["error"]["code"] == "policy.debug_forbidden"


def test_snp_report_data_as_nonce(vectors: Path) -> None:
    d = vectors / "sev-snp/go-sev-guest"
    base = [str(d / "attestation.bin"), "--cert", str(d / "vcek.testcer"),
            "--cert", str(vectors / "sev-snp/amd-roots/ask_ark_milan.pem"), "--at", "2025-07-01"]
    _, ok = run(*base, "--nonce", "0102030405")
    assert ok["verified"] is True
    code, out = run(*base, "--nonce", "0102030406")
    assert code == 1 and out["error"]["code"] == "attestation.nonce_mismatch"
    code, out = run(*base, "--nonce", "")
    assert code == 1 and out["error"]["code"] == "attestation.nonce_mismatch"


def test_tdx_with_complete_collateral_is_up_to_date(vectors: Path) -> None:
    d = vectors / "tdx/dcap-qvl"
    code, out = run(str(d / "tdx_quote"), "--collateral", str(d / "tdx_quote_collateral.json"),
                    "--at", "2025-07-01T00:00:00Z")
    assert code == 0, out["error"]
    assert out["platform"] == "tdx" and out["tcb_status"] == "UpToDate"
    assert set(out["claims"]) >= {"mr_td", "mr_seam", "rtmr0", "rtmr3", "report_data", "fmspc", "debug"}


def test_tdx_without_matching_level_is_refused_by_default_policy(vectors: Path) -> None:
    d = vectors / "tdx/go-tdx-guest"
    code, out = run(str(d / "tdx_prod_quote_SPR_E4.dat"),
                    "--collateral", str(d / "sample_tcbInfo_response"),
                    "--cert", str(d / "tcbinfo_issuer_chain.pem"), "--at", "2023-07-01")
    assert out["verified"] is True and out["tcb_status"] == "NoMatch"
    assert code == 1 and out["error"]["code"] == "policy.tcb_too_low"


def test_nvidia_h100_evidence(vectors: Path) -> None:
    d = vectors / "nvidia/nvtrust"
    code, out = run(str(d / "hopperAttestationReport.txt"), "--cert", str(d / "hopperCertChain.txt"),
                    "--nonce", NVIDIA_NONCE, "--at", "2025-07-01")
    assert code == 0, out["error"]
    assert out["claims"]["driver_version"] == "550.90.07"
    assert out["claims"]["nonce"] == NVIDIA_NONCE
    code, out = run(str(d / "hopperAttestationReport.txt"), "--cert", str(d / "hopperCertChain.txt"),
                    "--nonce", "00" * 32, "--at", "2025-07-01")
    assert code == 1 and out["error"]["code"] == "attestation.nonce_mismatch"


def test_azure_snp_vtpm(vectors: Path) -> None:
    code, out = run(str(vectors / "vtpm/az-snp-vtpm/evidence-v1.json"),
                    "--cert", str(vectors / "sev-snp/amd-roots/ask_ark_milan.pem"),
                    "--nonce", b"challenge".hex(), "--at", "2025-06-01")
    assert code == 0, out["error"]
    assert out["platform"] == "az-snp-vtpm"
    assert out["claims"]["pcrs"]["0"].startswith("e15c4479")
    assert out["claims"]["hardware"]["reported_tcb_parts"]["ucode"] == 219


@pytest.mark.parametrize("content", [b"", b"not evidence at all", b"{}", b"\x02" + b"\0" * 100])
def test_unusable_input_exits_2(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "evidence"
    f.write_bytes(content)
    code, out = run(str(f))
    assert code == 2 and out["verified"] is False and out["error"]["code"].startswith("attestation.")


def test_bad_policy_exits_2(vectors: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("platforms = []\n")
    code, out = run(str(vectors / "sev-snp/virtee-sev/report_milan.hex"), "--policy", str(policy))
    assert code == 2 and out["error"]["code"] == "policy.empty"


def test_sim_bundle_needs_its_root_and_a_policy_naming_sim(tmp_path: Path) -> None:
    authority = sim.SimAuthority.load_or_create(tmp_path)
    nonce = b"\x07" * 32
    bundle = tmp_path / "bundle.json"
    bundle.write_text(sim.make_bundle(authority, nonce=nonce, runtime={"engine": "x"}).model_dump_json())
    code, out = run(str(bundle), "--nonce", nonce.hex())
    assert code == 1 and out["error"]["code"] == "attestation.root_untrusted"
    code, out = run(str(bundle), "--nonce", nonce.hex(), "--sim-root", authority.root_fingerprint)
    assert code == 1 and out["verified"] is True and out["secure"] is False
    assert out["error"]["code"] == "policy.platform_not_allowed"
    policy = tmp_path / "sim.toml"
    policy.write_text('platforms = ["sim"]\n')
    code, out = run(str(bundle), "--nonce", nonce.hex(), "--sim-root", authority.root_fingerprint,
                    "--policy", str(policy))
    assert code == 0 and out["claims"]["runtime"] == {"engine": "x"}


def test_readable_table_without_json(vectors: Path) -> None:
    d = vectors / "sev-snp/virtee-sev"
    result = runner.invoke(app, ["attest", "verify", str(d / "report_milan.hex"), "--cert",
                                 str(d / "vcek_milan.der"), "--cert", str(d / "cert_chain_milan"),
                                 "--at", "2025-07-01"])
    assert result.exit_code == 0 and "VERIFIED" in result.stdout and "report signature" in result.stdout


def test_online_fetches_endorsements_only_when_asked(vectors: Path, tmp_path: Path) -> None:
    """--online builds the one explicit provider; without it nothing is fetched."""
    import httpx

    from medclave.attestation.online import OnlineEndorsements
    from medclave.cli.attest import run_verify
    from tests.attestation.test_sevsnp_kds import S1_CHIP
    from tests.conftest import at

    snp = vectors / "sev-snp"
    routes = {
        f"/vcek/v1/Milan/{S1_CHIP}": (snp / "go-sev-guest/vcek.testcer").read_bytes(),
        "/vcek/v1/Milan/cert_chain": (snp / "amd-roots/ask_ark_milan.pem").read_bytes(),
    }
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        body = routes.get(request.url.path)
        return httpx.Response(200, content=body) if body else httpx.Response(404)

    report = snp / "go-sev-guest/attestation.bin"
    code, out = run_verify(report, [], [], None, None, at("2025-07-01"))
    assert code == 2 and out["error"]["code"] == "attestation.certificate_missing" and not seen
    provider = OnlineEndorsements(cache_dir=tmp_path,
                                  client=httpx.Client(transport=httpx.MockTransport(handle)))
    code, out = run_verify(report, [], [], None, None, at("2025-07-01"), online=provider)
    assert any(p.startswith("/vcek/v1/Milan/") for p in seen)
    # AMD's CRL is not among the vectors: the provider fails closed rather than skip revocation.
    assert out["error"]["code"] == "attestation.certificate_missing"
    assert any(c["name"] == "online endorsements" for c in out["checks"])
