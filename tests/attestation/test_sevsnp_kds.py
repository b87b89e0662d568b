"""The online AMD KDS provider, always through ``httpx.MockTransport``: never the network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from medclave.attestation import sevsnp
from medclave.attestation.core import VerifyOptions
from medclave.attestation.online.kds import KdsProvider
from medclave.attestation.sevsnp.abi import parse_report
from medclave.attestation.x509chain import cert_der
from medclave.errors import AttestationError
from tests.attestation.snp_synth import make_chain, make_crl, sign
from tests.attestation.test_sevsnp_synth import (
    CHIP,
    MILAN_TCB,
    TURIN_TCB,
    milan_report,
    turin_report,
)
from tests.conftest import at

NOW = at("2025-07-01")
S1_CHIP = ("3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936"
           "776b564ea464cdce40c05f63c9b610c5068b006b5d")

Handler = Callable[[httpx.Request], httpx.Response]


def client(routes: dict[str, bytes], seen: list[str] | None = None,
           status: int = 200) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(str(request.url))
        body = routes.get(request.url.path)
        if body is None:
            return httpx.Response(404)
        return httpx.Response(status, content=body)

    return httpx.Client(transport=httpx.MockTransport(handle))


@pytest.fixture
def s1_routes(vectors: Path) -> dict[str, bytes]:
    snp = vectors / "sev-snp"
    return {
        f"/vcek/v1/Milan/{S1_CHIP}": (snp / "go-sev-guest/vcek.testcer").read_bytes(),
        "/vcek/v1/Milan/cert_chain": (snp / "amd-roots/ask_ark_milan.pem").read_bytes(),
    }


def s1(vectors: Path) -> bytes:
    return (vectors / "sev-snp/go-sev-guest/attestation.bin").read_bytes()


def test_fetches_vcek_and_chain_then_verifies(vectors: Path, s1_routes: dict[str, bytes],
                                              tmp_path: Path) -> None:
    seen: list[str] = []
    kds = KdsProvider(client=client(s1_routes, seen), cache_dir=tmp_path, product="Milan",
                      fetch_crl=False)
    result = sevsnp.verify(s1(vectors), VerifyOptions(now=NOW, online=kds))
    assert result.secure and result.claims["measurement"].startswith("b07af962")
    assert seen == [
        f"https://kdsintf.amd.com/vcek/v1/Milan/{S1_CHIP}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68",
        "https://kdsintf.amd.com/vcek/v1/Milan/cert_chain",
    ]
    assert any(c.name == "online endorsements" for c in result.checks)
    # Second provider, network down: the disk cache answers.
    offline = KdsProvider(client=client({}, status=500), cache_dir=tmp_path, product="Milan",
                          fetch_crl=False)
    sevsnp.verify(s1(vectors), VerifyOptions(now=NOW, online=offline))


def test_fetched_certificates_are_still_verified(
    vectors: Path, s1_routes: dict[str, bytes]
) -> None:
    snp = vectors / "sev-snp"
    routes = dict(s1_routes)
    routes["/vcek/v1/Milan/cert_chain"] = (snp / "amd-roots/ask_ark_genoa.pem").read_bytes()
    kds = KdsProvider(client=client(routes), product="Milan", fetch_crl=False)
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(s1(vectors), VerifyOptions(now=NOW, online=kds))
    assert info.value.code == "attestation.chain_invalid"


@pytest.mark.parametrize(("status", "hint"), [(429, "rate limited"), (404, "404"), (500, "500")])
def test_kds_errors(vectors: Path, s1_routes: dict[str, bytes], status: int, hint: str) -> None:
    kds = KdsProvider(client=client(s1_routes, status=status), product="Milan", fetch_crl=False)
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(s1(vectors), VerifyOptions(now=NOW, online=kds))
    assert info.value.code == "attestation.certificate_missing" and hint in info.value.detail


def test_oversized_response(vectors: Path) -> None:
    routes = {f"/vcek/v1/Milan/{S1_CHIP}": b"\x30" * (300 * 1024)}
    kds = KdsProvider(client=client(routes), product="Milan", fetch_crl=False)
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(s1(vectors), VerifyOptions(now=NOW, online=kds))
    assert "too large" in info.value.detail


def test_unreachable(vectors: Path) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route", request=request)

    kds = KdsProvider(client=httpx.Client(transport=httpx.MockTransport(boom)), product="Milan")
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(s1(vectors), VerifyOptions(now=NOW, online=kds))
    assert info.value.code == "attestation.certificate_missing"


def test_v2_without_product_hint(vectors: Path) -> None:
    kds = KdsProvider(client=client({}))
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(s1(vectors), VerifyOptions(now=NOW, online=kds))
    assert "product" in info.value.detail


def test_turin_url_uses_8_byte_hwid_and_fmc() -> None:
    kds = KdsProvider(client=client({}), base_url="https://kds.test/")
    url = kds.vcek_url("Turin", parse_report(sign(turin_report(), make_chain(
        "Turin", tcb=TURIN_TCB, hwid=CHIP[:8]).leaf_key)))
    assert url == (f"https://kds.test/vcek/v1/Turin/{CHIP[:8].hex()}"
                   "?fmcSPL=1&blSPL=2&teeSPL=3&snpSPL=4&ucodeSPL=5")
    assert kds.chain_url("Genoa", "vlek") == "https://kds.test/vlek/v1/Genoa/cert_chain"
    assert kds.crl_url("Milan", "vcek") == "https://kds.test/vcek/v1/Milan/crl"


def test_crl_from_kds_is_applied(tmp_path: Path) -> None:
    chain = make_chain("Milan", tcb=MILAN_TCB, hwid=CHIP)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (chain.ask, chain.ark))
    good = make_crl(chain.ark, chain.ark_key).public_bytes(serialization.Encoding.DER)
    bad = make_crl(chain.ark, chain.ark_key, revoked=(chain.ask.serial_number,),
                   last=at("2026-01-15")).public_bytes(serialization.Encoding.DER)
    data = sign(milan_report(), chain.leaf_key)
    vcek_path = f"/vcek/v1/Milan/{CHIP.hex()}"
    routes = {vcek_path: cert_der(chain.leaf), "/vcek/v1/Milan/cert_chain": pem,
              "/vcek/v1/Milan/crl": good}
    kds = KdsProvider(client=client(routes), product="Milan", cache_dir=tmp_path)
    result = sevsnp.verify(data, VerifyOptions(now=NOW, online=kds, trusted_roots=chain.roots))
    assert any(c.name.startswith("CRL ") for c in result.checks)
    routes["/vcek/v1/Milan/crl"] = bad  # cached good CRL still current: used, no refetch
    sevsnp.verify(data, VerifyOptions(now=NOW, online=kds, trusted_roots=chain.roots))
    later = at("2026-02-01")  # past the cached CRL's nextUpdate: fetched again, now revoked
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(data, VerifyOptions(now=later, online=kds, trusted_roots=chain.roots))
    assert info.value.code == "attestation.certificate_revoked"


def test_no_provider_means_no_network(vectors: Path) -> None:
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(s1(vectors), VerifyOptions(now=NOW))
    assert info.value.code == "attestation.certificate_missing"
