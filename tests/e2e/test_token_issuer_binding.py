"""The enclave's attestation states whose tokens it accepts, and a hospital's policy can require
its own identity provider.

The attack (found while documenting the security model): the token issuer and its keys are the
operator's configuration. An operator boots the approved enclave build with an issuer of its own
(same issuer name, its own JWKS), mints tokens the enclave accepts and has requests logged
under any user's pseudonym; nothing in the attestation showed it. Now the runtime, which
report_data binds, states each issuer with where its keys come from (a JWKS URL or the SHA-256 of
a static key set), and a policy's ``token_issuers`` refuses any other before a prompt leaves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from medclave.attestation.policy import AppraisalPolicy
from medclave.client.session import EnclaveSession
from medclave.errors import PolicyError
from medclave.protocol import inference as proto
from tests.e2e.helpers import (
    ISSUER,
    Enclave,
    FakeEngine,
    Idp,
    make_idp,
    sim_policy,
    start_enclave,
)


def _policy(idp_jwks: Path) -> AppraisalPolicy:
    base = sim_policy().model_dump(mode="json")
    # The hospital names its IdP: the digest of the key set it publishes, computed here
    # directly from the file, as the hospital would.
    digest = hashlib.sha256(idp_jwks.read_bytes()).hexdigest()
    base["token_issuers"] = [{"issuer": ISSUER, "jwks": f"sha256:{digest}"}]
    return AppraisalPolicy.model_validate(base)


@pytest.fixture(scope="module")
def hospital_idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("hospital-idp"))


@pytest.fixture
def enclave_with(tmp_path: Path) -> Iterator[list[Enclave]]:
    started: list[Enclave] = []
    yield started
    for enclave in started:
        enclave.server.stop()
        enclave.booted.close()


def _ask(enclave: Enclave, policy: AppraisalPolicy, token: str) -> int:
    root = enclave.booted.platform.sim_root
    assert root is not None
    with EnclaveSession(enclave.server.url, policy, sim_roots=frozenset({root})) as session:
        answer = session.request("POST", proto.CHAT_PATH, body=json.dumps({
            "messages": [{"role": "user", "content": "INR 4.2 on warfarin?"}],
            "max_tokens": 4}).encode(), authorization=f"Bearer {token}")
    return answer.status


def test_the_hospitals_own_idp_is_accepted(tmp_path: Path, hospital_idp: Idp,
                                           enclave_with: list[Enclave]) -> None:
    engine = FakeEngine()
    enclave = start_enclave(tmp_path / "enclave", hospital_idp, engine=engine)
    enclave_with.append(enclave)
    stated = enclave.booted.service.runtime()["token_issuers"]
    assert stated == [{"issuer": ISSUER, "jwks": "sha256:" + hashlib.sha256(
        hospital_idp.jwks.read_bytes()).hexdigest()}]
    assert _ask(enclave, _policy(hospital_idp.jwks), hospital_idp.token()) == 200
    assert engine.calls == ["chat"]


def test_an_enclave_configured_with_the_operators_idp_is_refused_before_any_prompt(
        tmp_path: Path, hospital_idp: Idp, enclave_with: list[Enclave]) -> None:
    operator_idp = make_idp(tmp_path / "operator-idp")  # same issuer name, the operator's keys
    engine = FakeEngine()
    enclave = start_enclave(tmp_path / "enclave", operator_idp, engine=engine)
    enclave_with.append(enclave)
    with pytest.raises(PolicyError) as err:
        _ask(enclave, _policy(hospital_idp.jwks), operator_idp.token(sub="dr-bob"))
    assert err.value.code == "policy.token_issuer_not_allowed"
    assert engine.calls == []


def test_an_enclave_that_checks_no_token_is_refused(tmp_path: Path, hospital_idp: Idp,
                                                     enclave_with: list[Enclave]) -> None:
    enclave = start_enclave(tmp_path / "enclave", None, engine=FakeEngine())  # insecure_no_auth
    enclave_with.append(enclave)
    assert enclave.booted.service.runtime()["token_issuers"] == []
    with pytest.raises(PolicyError) as err:
        _ask(enclave, _policy(hospital_idp.jwks), hospital_idp.token())
    assert err.value.code == "policy.token_issuer_not_allowed"
