"""Google Confidential Space tokens G1 (production) and G2 (debug) of the vectors MANIFEST."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from medclave.attestation import registry
from medclave.attestation.binding import report_data_for
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.gcp import cs
from medclave.attestation.policy import appraisal_of, default_policy, parse_policy
from medclave.attestation.verifier import split_trust_files, verify_bundle, verify_raw
from medclave.crypto import jose
from medclave.errors import AttestationError
from medclave.protocol.evidence import EvidenceBundle

G1_AT, G2_AT = "2026-10-08T22:30:00Z", "2026-10-08T22:30:00Z"
NONCE = "8bbd16f5b103edde017ba6f3d953a781165a0d512dc97adaad905321444fad19"


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.fixture(scope="module")
def g(vectors: Path) -> dict[str, bytes]:
    d = vectors / "gcp-confidential-space" / "atlas-pca"
    return {n: (d / f).read_bytes() for n, f in (("g1", "prod-token.jwt"),
                                                 ("g2", "debug-token.jwt"),
                                                 ("jwks", "google-cs-jwks.json"))}


def opts(when: str, jwks: bytes | None, nonce: bytes | None = None) -> VerifyOptions:
    return VerifyOptions(now=t(when), expected_nonce=nonce,
                         endorsements=Endorsements(keys=(jwks,) if jwks else ()))


def refused(data: bytes, options: VerifyOptions) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        cs.verify(data, options)
    return info.value


def test_g1_production_token(g: dict[str, bytes]) -> None:
    assert registry.detect(g["g1"]) == "gcp-cs"
    v = cs.verify(g["g1"], opts(G1_AT, g["jwks"]))
    c = v.claims
    assert v.checks[0].detail.endswith("1be6ff7287d64031")
    assert c["iss"] == "https://confidentialcomputing.googleapis.com" and c["aud"] == (
        "pca-attestation")
    assert (c["hwmodel"], c["swname"], c["swversion"]) == ("GCP_AMD_SEV", "CONFIDENTIAL_SPACE",
                                                           ["260900"])
    assert c["dbgstat"] == "disabled-since-boot" and c["debug"] is False
    assert c["support_attributes"] == ["LATEST", "STABLE", "USABLE"]
    assert c["image_digest"].startswith("sha256:b1c058a8") and c["image_digest"].endswith(
        "e64ca46e")
    assert c["image_reference"].endswith("pca-cs/token-capture:v2")
    assert c["restart_policy"] == "Never" and c["secboot"] is True and c["oemid"] == 11129
    assert c["eat_nonce"] == [NONCE] and c["gce"]["zone"] == "us-central1-c"
    assert v.tcb_status == "UpToDate"
    assert appraisal_of(v, default_policy(), now=t(G1_AT)).accepted
    aud = parse_policy(b'platforms = ["gcp-cs"]\n[platform.gcp-cs.reference_values]\n'
                       b'aud = ["pca-attestation"]\nhwmodel = ["GCP_AMD_SEV", "GCP_INTEL_TDX"]\n')
    assert appraisal_of(v, aud, now=t(G1_AT)).accepted
    other = parse_policy(b'platforms = ["gcp-cs"]\n[platform.gcp-cs.reference_values]\n'
                         b'aud = ["someone-else"]\n')
    assert not appraisal_of(v, other, now=t(G1_AT)).accepted


def test_g1_nonce(g: dict[str, bytes]) -> None:
    assert cs.verify(g["g1"], opts(G1_AT, g["jwks"], bytes.fromhex(NONCE)))
    err = refused(g["g1"], opts(G1_AT, g["jwks"], bytes.fromhex(NONCE)[::-1]))
    assert err.code == "attestation.nonce_mismatch"


def test_g2_debug_token_is_refused_by_the_default_policy(g: dict[str, bytes]) -> None:
    v = cs.verify(g["g2"], opts(G2_AT, g["jwks"]))
    assert v.claims["dbgstat"] == "enabled" and v.claims["debug"] is True
    assert v.claims["support_attributes"] == [] and v.tcb_status == "OutOfDate"
    codes = {x["code"] for x in appraisal_of(v, default_policy(), now=t(G2_AT)).violations}
    assert "policy.debug_forbidden" in codes


@pytest.mark.parametrize(("name", "when"), [
    ("g1", "2026-10-08T22:57:24Z"), ("g1", "2026-10-08T21:57:23Z"), ("g1", "2026-10-09T00:00:00Z"),
    ("g2", "2026-10-08T22:53:21Z"),
])
def test_outside_the_window_is_refused(g: dict[str, bytes], name: str, when: str) -> None:
    assert refused(g[name], opts(when, g["jwks"])).code == "attestation.evidence_expired"


def _payload_changed(token: bytes, **changes: Any) -> bytes:
    header, payload, sig = token.strip().split(b".")
    claims = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    claims.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return header + b"." + new + b"." + sig


def test_changed_claim_and_flipped_signature_are_refused(g: dict[str, bytes]) -> None:
    assert refused(_payload_changed(g["g2"], dbgstat="disabled-since-boot"),
                   opts(G2_AT, g["jwks"])).code == "attestation.signature_invalid"
    header, payload, sig = g["g1"].strip().split(b".")
    raw = bytearray(base64.urlsafe_b64decode(sig + b"=" * (-len(sig) % 4)))
    raw[10] ^= 1
    flipped = header + b"." + payload + b"." + jose.b64url_encode(bytes(raw)).encode()
    assert refused(flipped, opts(G1_AT, g["jwks"])).code == "attestation.signature_invalid"


def test_keys_come_only_from_the_relying_party(g: dict[str, bytes]) -> None:
    assert refused(g["g1"], opts(G1_AT, None)).code == "attestation.certificate_missing"
    other = rsa.generate_private_key(65537, 2048)
    jwks = json.dumps({"keys": [{**jose.public_jwk_members(other.public_key()),
                                 "kid": "someone"}]}).encode()
    assert refused(g["g1"], opts(G1_AT, jwks)).code == "attestation.root_untrusted"
    # The same kid on another key: the signature decides.
    same_kid = json.dumps({"keys": [{**jose.public_jwk_members(other.public_key()),
                                     "kid": "1be6ff7287d640316ddc929e1a8b21fbca7e54e7"}]}).encode()
    assert refused(g["g1"], opts(G1_AT, same_kid)).code == "attestation.signature_invalid"
    assert split_trust_files([g["jwks"]]) == ([], [g["jwks"]])


def _forged(key: rsa.RSAPrivateKey, **claims: Any) -> bytes:
    base: dict[str, Any] = {"iss": cs.ISSUER, "aud": "medclave", "iat": 1791496644,
                            "nbf": 1791496644, "exp": 1791500244, "dbgstat": "disabled-since-boot",
                            "submods": {"confidential_space": {"support_attributes": ["LATEST"]}}}
    base.update(claims)
    return jose.sign_compact({"alg": "RS256", "kid": "test", "typ": "JWT"}, base, key).encode()


def test_binding_in_two_eat_nonces_and_bundle_keys_are_not_trusted() -> None:
    key = rsa.generate_private_key(65537, 2048)
    jwks = json.dumps({"keys": [{**jose.public_jwk_members(key.public_key()),
                                 "kid": "test"}]}).encode()
    nonce, runtime = b"\x01" * 32, {"engine": "cs"}
    rd = report_data_for(nonce, runtime).hex()
    token = _forged(key, eat_nonce=[rd[:64], rd[64:]])
    assert verify_raw(token, now=t(G1_AT), keys=[jwks]).claims["report_data"] == rd
    bundle = EvidenceBundle(platform="gcp-cs", evidence=base64.b64encode(token).decode(),
                            nonce=nonce.hex(), runtime=runtime)
    assert verify_bundle(bundle, now=t(G1_AT), expected_nonce=nonce, keys=[jwks])
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle.model_copy(update={"runtime": {"engine": "other"}}), now=t(G1_AT),
                      expected_nonce=nonce, keys=[jwks])
    assert info.value.code == "attestation.binding_mismatch"
    # An enclave that ships its own "JWKS" in the bundle gains nothing: bundle endorsements are
    # certificates only.
    sneaky = EvidenceBundle.model_validate({**bundle.model_dump(),
                                            "endorsements": {"certificates": [jwks.decode()]}})
    with pytest.raises(AttestationError) as info:
        verify_bundle(sneaky, now=t(G1_AT), expected_nonce=nonce)
    assert info.value.code == "attestation.malformed"


def test_other_issuer_and_alg_are_refused() -> None:
    key = rsa.generate_private_key(65537, 2048)
    jwks = json.dumps({"keys": [{**jose.public_jwk_members(key.public_key()),
                                 "kid": "test"}]}).encode()
    token = _forged(key, iss="https://evil.example")
    err = refused(token, opts(G1_AT, jwks))
    assert err.code == "attestation.signature_invalid" and err.checks[-1].name == "3. issuer"
    none_alg = b"eyJhbGciOiJub25lIn0." + token.split(b".")[1] + b".AAAA"
    assert refused(none_alg, opts(G1_AT, jwks)).code == "attestation.signature_invalid"


def test_online_provider_fetches_the_jwks_only_when_given(g: dict[str, bytes],
                                                          tmp_path: Path) -> None:
    import httpx

    from medclave.attestation.online import CONFIDENTIAL_SPACE_JWKS, OnlineEndorsements

    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=g["jwks"])

    provider = OnlineEndorsements(cache_dir=tmp_path,
                                  client=httpx.Client(transport=httpx.MockTransport(handle)))
    try:
        v = cs.verify(g["g1"], VerifyOptions(now=t(G1_AT), online=provider))
        assert seen == [CONFIDENTIAL_SPACE_JWKS] and v.checks[1].detail.startswith("Google's JWKS")
        seen.clear()
        cs.verify(g["g1"], opts(G1_AT, g["jwks"]))  # a given JWKS: nothing is fetched
        assert not seen
    finally:
        provider.close()

    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    offline = OnlineEndorsements(cache_dir=tmp_path,
                                 client=httpx.Client(transport=httpx.MockTransport(down)))
    try:
        err = refused(g["g1"], VerifyOptions(now=t(G1_AT), online=offline))
        assert err.code == "attestation.provider_offline"
    finally:
        offline.close()


def test_declared_platform_must_be_the_evidence(g: dict[str, bytes]) -> None:
    with pytest.raises(AttestationError) as info:
        verify_raw(g["g1"], now=t(G1_AT), platform="gce-tpm", keys=[g["jwks"]])
    assert info.value.code == "attestation.unknown_platform"
    assert verify_raw(g["g1"], now=t(G1_AT), platform="gcp-cs", keys=[g["jwks"]])
