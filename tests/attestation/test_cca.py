"""Arm CCA: the golden token C1 of the vectors MANIFEST (FVP test CPAK), and tokens under keys
made here for the paths no public token reaches."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from medclave.attestation import cca, registry
from medclave.attestation.binding import report_data_for
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.policy import appraisal_of, default_policy, parse_policy
from medclave.attestation.verifier import split_trust_files, verify_bundle, verify_raw
from medclave.errors import AttestationError
from medclave.protocol.evidence import EvidenceBundle
from tests.attestation._cose_forge import cca_token
from tests.conftest import flip

NOW = datetime(2026, 1, 1, tzinfo=UTC)  # a CCA token carries no time: any instant serves


@pytest.fixture(scope="module")
def c(vectors: Path) -> dict[str, bytes]:
    d = vectors / "cca"
    return {"token": (d / "trustee/cca-example-token.cbor").read_bytes(),
            "pem": (d / "ccatoken/cca_platform.pub").read_bytes(),
            "jwk": (d / "trustee/cpak-pub.json").read_bytes(),
            "tastore": (d / "trustee/tastore.json").read_bytes(),
            "rvstore": (d / "trustee/rvstore.json").read_bytes()}


def opts(keys: tuple[bytes, ...], collateral: tuple[bytes, ...] = (),
         nonce: bytes | None = None) -> VerifyOptions:
    return VerifyOptions(now=NOW, expected_nonce=nonce,
                         endorsements=Endorsements(keys=keys, collateral=collateral))


def refused(data: bytes, options: VerifyOptions) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        cca.verify(data, options)
    return info.value


@pytest.mark.parametrize("key", ["pem", "jwk", "tastore"])
def test_c1_golden_token(c: dict[str, bytes], key: str) -> None:
    assert registry.detect(c["token"]) == "cca"
    assert split_trust_files([c[key]]) == ([], [c[key]])
    v = cca.verify(c["token"], opts((c[key],), (c["rvstore"],)))
    p, r = v.claims["platform"], v.claims["realm"]
    assert v.claims["profile"] == "http://arm.com/CCA-SSD/1.0.0"
    assert p["implementation_id"].startswith("7f454c46") and len(p["implementation_id"]) == 64
    assert p["instance_id"].startswith("0107060504") and p["instance_id"].endswith("1918")
    assert (p["lifecycle"], p["lifecycle_state"], p["config"]) == (0x3003, "secured", "cfcfcfcf")
    assert len(p["sw_components"]) == 13 and p["sw_components"][0]["type"] == "RSE_BL1_2"
    assert {s["type"] for s in p["sw_components"]} >= {"RSE_BL2", "RMM", "AP_BL31", "SOC_FW_CONFIG"}
    assert p["challenge"].startswith("b5973cb6") and p["challenge"].endswith("11ea")
    # MANIFEST prints the tail as "dcc8b85a96"; the token (and its signature) say "cdc8b85a96".
    assert r["challenge"].startswith("57e979ae") and r["challenge"].endswith("cdc8b85a96")
    assert r["initial_measurement"].startswith("ae87fbf7") and r["initial_measurement"].endswith(
        "9dbdac7c")
    assert r["extensible_measurements"] == ["00" * 64] * 4 and r["personalization_value"] == (
        "00" * 64)
    assert (r["hash_algorithm"], r["public_key_hash_algorithm"]) == ("sha-512", "sha-256")
    assert [x.name for x in v.checks][-2:] == ["4. platform-realm binding", "5. reference values"]
    # Arm's FVP key: verified, never secure, and the default policy refuses it.
    assert v.secure is False and "FVP test CPAK" in v.warnings[0] and v.claims["debug"] is False
    assert [x["code"] for x in appraisal_of(v, default_policy(), now=NOW).violations] == [
        "policy.platform_not_allowed"]


def test_c1_reference_values_from_the_policy(c: dict[str, bytes]) -> None:
    v = cca.verify(c["token"], opts((c["pem"],)))
    rim = v.claims["realm"]["initial_measurement"]
    good = parse_policy(f'platforms = ["cca"]\n[platform.cca.reference_values]\n'
                        f'"realm.initial_measurement" = ["{rim}"]\n'
                        f'"platform.config" = ["cfcfcfcf"]\n'.encode())
    bad = parse_policy(b'platforms = ["cca"]\n[platform.cca.reference_values]\n'
                       b'"realm.initial_measurement" = ["' + b"00" * 64 + b'"]\n')
    good_codes = [x["code"] for x in appraisal_of(v, good, now=NOW).violations]
    bad_codes = [x["code"] for x in appraisal_of(v, bad, now=NOW).violations]
    assert "attestation.measurement_mismatch" not in good_codes
    assert "attestation.measurement_mismatch" in bad_codes


def test_c1_reference_store_mismatch(c: dict[str, bytes]) -> None:
    store = json.loads(c["rvstore"])
    store["realm"][0]["initial-measurement"] = "00" * 64
    err = refused(c["token"], opts((c["pem"],), (json.dumps(store).encode(),)))
    assert err.code == "attestation.measurement_mismatch" and "realm" in err.detail
    store = json.loads(c["rvstore"])
    store["platform"][0]["sw-components"][3]["measurement-value"] = "00" * 32
    err = refused(c["token"], opts((c["pem"],), (json.dumps(store).encode(),)))
    assert err.code == "attestation.measurement_mismatch" and "platform" in err.detail


def test_c1_flipped_signed_bytes_are_refused(c: dict[str, bytes]) -> None:
    token = c["token"]
    config = token.index(bytes.fromhex("cfcfcfcf"))  # platform claims
    rim = token.index(bytes.fromhex("ae87fbf7"))  # realm claims
    for offset, step in ((config, "2. platform signature"), (rim, "3. realm signature"),
                         (len(token) - 1, "3. realm signature")):
        err = refused(flip(token, offset), opts((c["pem"],)))
        assert err.code == "attestation.signature_invalid" and err.checks[-1].name == step


def test_cpak_is_never_taken_from_the_token(c: dict[str, bytes]) -> None:
    assert refused(c["token"], opts(())).code == "attestation.certificate_missing"
    other = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert refused(c["token"], opts((other,))).code == "attestation.signature_invalid"
    store = json.loads(c["tastore"])
    store[0]["instance-id"] = "01" + "00" * 32  # another platform's entry
    err = refused(c["token"], opts((json.dumps(store).encode(),)))
    assert err.code == "attestation.certificate_missing"


def test_token_under_a_new_cpak_is_secure_and_binds_a_bundle() -> None:
    cpak = ec.generate_private_key(ec.SECP384R1())
    pem = cpak.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    nonce, runtime = b"\x09" * 32, {"engine": "realm"}
    token = cca_token(cpak, challenge=report_data_for(nonce, runtime))
    v = verify_raw(token, now=NOW, keys=[pem])
    assert v.secure and not v.warnings and appraisal_of(v, default_policy(), now=NOW).accepted
    bundle = EvidenceBundle(platform="cca", evidence=base64.b64encode(token).decode(),
                            nonce=nonce.hex(), runtime=runtime)
    assert verify_bundle(bundle, now=NOW, expected_nonce=nonce, keys=[pem])
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle.model_copy(update={"runtime": {}}), now=NOW, expected_nonce=nonce,
                      keys=[pem])
    assert info.value.code == "attestation.binding_mismatch"


def test_unbound_realm_and_debug_lifecycle() -> None:
    cpak = ec.generate_private_key(ec.SECP384R1())
    pem = cpak.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    # A platform token lifted beside another realm: its challenge is not that RAK's hash.
    err = refused(cca_token(cpak, bind=False), opts((pem,)))
    assert err.code == "attestation.binding_mismatch"
    debug = cca.verify(cca_token(cpak, lifecycle=0x4000), opts((pem,)))
    assert debug.claims["platform"]["lifecycle_state"] == "non-psa-rot-debug"
    assert [x["code"] for x in appraisal_of(debug, default_policy(), now=NOW).violations] == [
        "policy.debug_forbidden"]


def test_nonce_is_the_realm_challenge() -> None:
    cpak = ec.generate_private_key(ec.SECP384R1())
    pem = cpak.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    token = cca_token(cpak, challenge=b"\x42" * 16 + bytes(48))
    assert cca.verify(token, opts((pem,), nonce=b"\x42" * 16))
    assert refused(token, opts((pem,), nonce=b"\x43" * 16)).code == "attestation.nonce_mismatch"
