"""Issue 9.1, the rest: the broker's key as the administrator hands it out, HTTPS to the broker
(supported, pinned, but not relied on), and relying parties' policies naming the broker."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medclave.attestation import sim
from medclave.attestation.policy import AppraisalPolicy, appraisal_of
from medclave.attestation.verifier import verify_bundle
from medclave.enclave.boot import trusted_brokers
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import InputError, KbsError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.signing import TrustedBrokers
from tests.kbs.helpers import MEASUREMENT, RESOURCE, sim_attester, sim_policy


def medclave(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medclave.cli.main", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, check=False)


def test_key_show_prints_the_broker_key_and_keeps_it(tmp_path: Path) -> None:
    first = medclave("kbs", "key", "show", "--data", str(tmp_path / "kbs"))
    assert first.returncode == 0, first.stderr
    shown = json.loads(first.stdout)
    public = base64.b64decode(shown["public_key"], validate=True)
    assert len(public) == 32
    assert shown["key_id"] == hashlib.sha256(public).hexdigest()
    key_file = tmp_path / "kbs" / "signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(medclave("kbs", "key", "show", "--data", str(tmp_path / "kbs")).stdout) == shown
    key_file.chmod(0o644)  # a key others can read is refused, with the unusable-input exit code
    refused = medclave("kbs", "key", "show", "--data", str(tmp_path / "kbs"))
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["error"]["code"] == "config.invalid"


def test_an_enclave_with_a_broker_must_pin_its_key() -> None:
    with pytest.raises(InputError) as err:
        trusted_brokers(EnclaveSettings(kbs_url="http://127.0.0.1:8450"))
    assert err.value.code == "config.invalid"
    assert trusted_brokers(EnclaveSettings()) is None  # no broker, nothing to pin
    pinned = trusted_brokers(EnclaveSettings(kbs_url="http://127.0.0.1:8450",
                                             kbs_keys=("11" * 32,)))
    assert pinned is not None
    assert pinned.fingerprints() == [hashlib.sha256(bytes.fromhex("11" * 32)).hexdigest()]


# --- HTTPS ---------------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medclave-kbs test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "kbs.crt", folder / "kbs.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_the_broker_serves_https_and_the_enclave_pins_it(tmp_path: Path) -> None:
    authority = sim.SimAuthority.load_or_create(tmp_path / "sim")
    cert, key = _self_signed(tmp_path)
    data = tmp_path / "kbs"
    token = json.loads(medclave("kbs", "owner", "add", "vendor", "--data", str(data)).stdout)["token"]
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "medclave.cli.main", "kbs", "serve", "--data", str(data),
         "--port", str(port), "--sim-root", authority.root_fingerprint,
         "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                keys = httpx.get(url + "/kbs/v1/keys",
                                 verify=ssl.create_default_context(cafile=str(cert))).json()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        shown = json.loads(medclave("kbs", "key", "show", "--data", str(data)).stdout)
        assert keys == [shown]  # the served key is the administrator's
        with OwnerClient(url, token, verify=str(cert)) as owner:
            owner.put(RESOURCE, b"s" * 32)
            owner.set_policy(RESOURCE, sim_policy())
        trusted = TrustedBrokers.of([shown["public_key"]])
        with KbsClient(url, sim_attester(authority), trusted=trusted, verify=str(cert)) as c:
            assert c.fetch(RESOURCE) == b"s" * 32
        # Without the pinned certificate (system roots only) the connection is refused.
        with KbsClient(url, sim_attester(authority), trusted=trusted) as c, \
                pytest.raises(KbsError) as err:
            c.fetch(RESOURCE)
        assert err.value.code == "kbs.unavailable"
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- relying parties' policies ------------------------------------------------------------------


def _verification(authority: sim.SimAuthority, runtime: dict[str, object]) -> object:
    nonce = os.urandom(32)
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    return verify_bundle(bundle, now=dt.datetime.now(dt.UTC), expected_nonce=nonce,
                         sim_roots=frozenset({authority.root_fingerprint}))


@pytest.mark.parametrize(("stated", "violation"), [
    (["aa" * 32], None),
    (["AA" * 32], None),
    ([], "the enclave states no trusted broker key"),
    (None, "the enclave states no trusted broker key"),
    (["aa" * 32, "bb" * 32], "bbbb"),
    ("aa" * 32, "the enclave states no trusted broker key"),  # not a list
])
def test_a_policy_naming_brokers_refuses_enclaves_trusting_others(
        authority: sim.SimAuthority, stated: object, violation: str | None) -> None:
    policy = AppraisalPolicy.model_validate({
        "platforms": ["sim"], "kbs_keys": ["aa" * 32],
        "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT.hex()]}}}})
    verification = _verification(authority, {"kbs_keys": stated})
    result = appraisal_of(verification, policy, now=dt.datetime.now(dt.UTC),  # type: ignore[arg-type]
                      kbs_keys=stated)
    found = [v for v in result.violations if v["code"] == "policy.kbs_key_not_allowed"]
    if violation is None:
        assert found == []
    else:
        assert len(found) == 1 and violation in found[0]["detail"]


def test_kbs_keys_in_a_policy_are_fingerprints() -> None:
    with pytest.raises(ValueError, match="kbs_keys"):
        AppraisalPolicy.model_validate({"platforms": ["sim"], "kbs_keys": ["not-hex"]})


# --- token issuers named by a policy -------------------------------------------------------------

IDP = {"issuer": "https://idp.st-marys.example", "jwks": "https://idp.st-marys.example/jwks"}


@pytest.mark.parametrize(("stated", "refused"), [
    ([IDP], False),
    ([IDP, {"issuer": "https://idp.st-marys.example", "jwks": "sha256:" + "00" * 32}], True),
    ([{"issuer": IDP["issuer"], "jwks": "https://operator.example/jwks"}], True),
    ([], True),
    (None, True),
    (["https://idp.st-marys.example"], True),  # not an {issuer, jwks} entry
    ([{"issuer": IDP["issuer"]}], True),
])
def test_a_policy_naming_token_issuers_refuses_any_other(
        authority: sim.SimAuthority, stated: object, refused: bool) -> None:
    policy = AppraisalPolicy.model_validate({
        "platforms": ["sim"], "token_issuers": [IDP],
        "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT.hex()]}}}})
    verification = _verification(authority, {"token_issuers": stated})
    result = appraisal_of(verification, policy, now=dt.datetime.now(dt.UTC),  # type: ignore[arg-type]
                      token_issuers=stated)
    codes = [v["code"] for v in result.violations]
    assert codes.count("policy.token_issuer_not_allowed") == (1 if refused else 0)
