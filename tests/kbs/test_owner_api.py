"""The owner API over real HTTP: versioned changes, owner-scoped credentials, masked refusals."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pytest

from medclave.errors import AuthError, KbsError, MedclaveError
from medclave.kbs.client import OwnerClient
from tests.kbs.conftest import Live
from tests.kbs.helpers import RESOURCE, error_code, sim_policy

LiveFactory = Callable[..., Live]
BASE = "/kbs/v1/owner"


@pytest.fixture
def live(live_factory: LiveFactory) -> Live:
    return live_factory()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_lifecycle(live: Live) -> None:
    with OwnerClient(live.url, live.token("vendor")) as c:
        assert c.put(RESOURCE, b"a" * 32) == 1
        assert c.rotate(RESOURCE, b"b" * 32) == 2
        assert c.rotate(RESOURCE, expected_version=2) == 3
        with pytest.raises(KbsError) as e:
            c.rotate(RESOURCE, expected_version=2)
        assert e.value.code == "kbs.conflict"
        assert c.list_resources() == [{"resource": RESOURCE, "current": 3, "versions": [1, 2, 3],
                                       "policy_version": None}]
        c.retire(RESOURCE, 1)
        with pytest.raises(KbsError) as e:
            c.retire(RESOURCE, 3)
        assert e.value.code == "kbs.conflict"
        assert c.get(RESOURCE)["versions"] == [2, 3]
        first = c.set_policy(RESOURCE, sim_policy())
        second = c.set_policy(RESOURCE, sim_policy(model_digests=("ab" * 32,)), expected_version=1)
        assert (first["version"], second["version"]) == (1, 2)
        assert second["versions"] == [1, 2] and second["digest"] != first["digest"]
        assert c.get_policy(RESOURCE, 1)["policy"]["model_digests"] == []
        assert c.get_policy(RESOURCE)["policy"]["model_digests"] == ["ab" * 32]
        with pytest.raises(KbsError):
            c.set_policy(RESOURCE, sim_policy(), expected_version=1)
        c.retire_policy(RESOURCE, 1)
        assert c.get(RESOURCE)["policy_version"] == 2
        c.delete(RESOURCE)
        assert c.list_resources() == []
        actions = [(d["action"], d["outcome"]) for d in c.decisions(RESOURCE, limit=50)][::-1]
    assert actions[:3] == [("create", "allowed"), ("rotate", "allowed"), ("rotate", "allowed")]
    assert ("rotate", "refused") in actions and ("delete", "allowed") in actions


def test_secrets_never_come_back(live: Live) -> None:
    token = live.token("vendor")
    secret = b"do-not-echo-" * 3
    with OwnerClient(live.url, token) as c:
        c.put(RESOURCE, secret)
    encoded = base64.b64encode(secret).decode()
    for path in ("/resources", "/resources/vendor/model-key/llama", "/decisions"):
        r = httpx.get(live.url + BASE + path, headers=auth(token))
        assert r.status_code == 200 and encoded not in r.text and "do-not-echo" not in r.text


def test_another_owner_sees_not_found(live: Live) -> None:
    with OwnerClient(live.url, live.token("vendor")) as c:
        c.put(RESOURCE, b"a" * 32)
    hospital = live.token("hospital")
    theirs = httpx.get(live.url + BASE + "/resources/vendor/model-key/llama", headers=auth(hospital))
    missing = httpx.get(live.url + BASE + "/resources/hospital/model-key/none",
                        headers=auth(hospital))
    # Not permitted and not found are indistinguishable from outside...
    assert theirs.status_code == missing.status_code == 404
    assert theirs.content == missing.content
    assert error_code(theirs) == "kbs.not_found"
    # ...but the decision log keeps which it was.
    calls: list[Callable[[OwnerClient], object]] = [
        lambda c: c.rotate(RESOURCE, b"x" * 32), lambda c: c.retire(RESOURCE, 1),
        lambda c: c.delete(RESOURCE), lambda c: c.set_policy(RESOURCE, sim_policy()),
        lambda c: c.put(RESOURCE, b"x" * 32),
    ]
    with OwnerClient(live.url, hospital) as c:
        for call in calls:
            with pytest.raises(KbsError) as e:
                call(c)
            assert e.value.code == "kbs.not_found"
            assert live.decisions[-1].code == "kbs.unauthorized"
            assert live.decisions[-1].outcome == "refused"
        with pytest.raises(KbsError):
            c.get_policy(RESOURCE)
    with OwnerClient(live.url, live.token("vendor")) as c:
        assert c.get(RESOURCE)["current"] == 1  # nothing changed


@pytest.mark.parametrize("header,code", [
    (None, "auth.token_missing"), ("Bearer", "auth.token_missing"),
    ("Basic dmVuZG9yOng=", "auth.token_missing"),
    ("Bearer mkt1.vendor.forged", "auth.invalid_credentials"),
    ("Bearer nonsense", "auth.invalid_credentials"),
])
def test_bad_credentials(live: Live, header: str | None, code: str) -> None:
    live.token("vendor")
    headers = {} if header is None else {"Authorization": header}
    r = httpx.put(live.url + BASE + "/resources/vendor/model-key/llama", json={},
                  headers=headers)
    assert r.status_code == 401 and error_code(r) == code
    assert live.decisions[-1].code == code and live.decisions[-1].action == "authenticate"


def test_wrong_owner_credentials_through_the_client(live: Live) -> None:
    live.token("vendor")
    with OwnerClient(live.url, "mkt1.vendor.not-the-token") as c, pytest.raises(AuthError) as e:
        c.put(RESOURCE)
    assert e.value.code == "auth.invalid_credentials"


@pytest.mark.parametrize("body,code", [
    (b'{"secret": "***"}', "input.malformed"), (b'{"secret": ""}', "input.missing"),
    (b'{"bogus": 1}', "input.malformed"), (b"nope", "input.malformed"),
])
def test_bad_secret_bodies(live: Live, body: bytes, code: str) -> None:
    r = httpx.put(live.url + BASE + "/resources/vendor/model-key/llama", content=body,
                  headers=auth(live.token("vendor")))
    assert r.status_code == 400 and error_code(r) == code


@pytest.mark.parametrize("body,code", [
    (b"{}", "policy.empty"), (b'{"appraisal": {"platforms": ["x"]}}', "policy.invalid"),
    (b"[", "input.malformed"),
])
def test_bad_policies(live: Live, body: bytes, code: str) -> None:
    r = httpx.put(live.url + BASE + "/policies/vendor/model-key/llama", content=body,
                  headers=auth(live.token("vendor")))
    assert r.status_code == 400 and error_code(r) == code


def test_bad_path_segments(live: Live) -> None:
    r = httpx.put(live.url + BASE + "/resources/Vendor/model-key/llama", json={},
                  headers=auth(live.token("vendor")))
    assert r.status_code == 400 and error_code(r) == "input.malformed"


def test_decisions_are_per_owner(live: Live) -> None:
    with OwnerClient(live.url, live.token("vendor")) as c:
        c.put(RESOURCE)
    with OwnerClient(live.url, live.token("hospital")) as c:
        c.put("kbs:///hospital/data-key/notes")
        mine = c.decisions()
        assert {d["resource"] for d in mine} == {"kbs:///hospital/data-key/notes"}
        with pytest.raises(MedclaveError):
            c.decisions(resource=RESOURCE)
