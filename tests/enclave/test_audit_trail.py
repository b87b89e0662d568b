"""The enclave's audit trail: commitments under the tenant's own key, refusals recorded without
content, and every Cedar decision's policy ids in the log (spy engine, no model)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.audit import AuditLog, open_commitment, parse_commitment_key, parse_entry, pseudonym
from medclave.audit.fhir import audit_event
from medclave.auth.authorizer import Authorizer
from medclave.auth.entities import Model
from medclave.crypto import bhttp
from medclave.crypto.ohttp import encapsulate_request
from medclave.enclave.attester import HostPlatform
from medclave.enclave.boot import build_commit_keys
from medclave.enclave.commitkeys import FileCommitKeys, read_key_file
from medclave.enclave.engines.base import SamplingParams
from medclave.enclave.hooks import AuditLogSink, DecisionTrail, policy_code
from medclave.enclave.openai_api import commitment_input, parse_commitment_input
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import InputError, MedclaveError
from medclave.protocol import inference as proto
from tests.e2e.helpers import (
    FAKE_ANSWER,
    Enclave,
    FakeEngine,
    Idp,
    make_idp,
    now,
    start_enclave,
    write_commitment_key,
)

PROMPT = "Mr Ramsay, MRN 4471, chest pain since 03:00: troponin plan?"
FORBID = """
@id("no-inference-for-researchers")
forbid (principal, action == Action::"infer", resource is Model)
when { principal.roles.contains("researcher") };
"""


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("idp"))


@pytest.fixture
def spy() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The shipped Cedar policies plus one forbid of the hospital's own."""
    folder = tmp_path / "policies"
    folder.mkdir()
    shipped = resources.files("medclave.auth").joinpath("policies")
    for item in shipped.iterdir():
        (folder / item.name).write_text(item.read_text(encoding="utf-8"))
    (folder / "hospital.cedar").write_text(FORBID)
    return folder


@pytest.fixture
def enclave(tmp_path: Path, idp: Idp, spy: FakeEngine, policies: Path) -> Iterator[Enclave]:
    e = start_enclave(tmp_path / "enclave", idp, engine=spy, audit_store="sqlite",
                      auth_policies_dir=policies)
    yield e
    e.stop()


def _call(enclave: Enclave, body: dict[str, object] | None, *, token: str | None,
          path: str = proto.CHAT_PATH) -> bhttp.Response:
    method, raw = ("GET", b"") if body is None else ("POST", json.dumps(body).encode())
    inner = proto.encode_inner_request(method, path, body=raw,
                                       authorization=f"Bearer {token}" if token else None)
    service = enclave.booted.service
    wire, context = encapsulate_request(service.keys.config, inner)
    outer = service.handle(wire, proto.OHTTP_REQUEST)
    return bhttp.decode_response(context.decapsulate_response(outer.body))


def _log(enclave: Enclave) -> AuditLog:
    sink = enclave.booted.service.audit
    assert isinstance(sink, AuditLogSink)
    return sink.audit_log


def _key(enclave: Enclave) -> bytes:
    path = enclave.settings.commitment_key_file
    assert path is not None
    return parse_commitment_key(path.read_bytes())


CHAT = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "seed": 3,
        "max_tokens": 8}


def test_a_refused_request_is_logged_with_its_policy_and_nothing_of_its_content(
        enclave: Enclave, idp: Idp, spy: FakeEngine) -> None:
    answer = _call(enclave, CHAT, token=idp.token(roles=("clinician", "researcher")))
    assert answer.status == 403
    # The refusal carries the refusal only: no receipt, no entry, no index.
    assert answer.header(proto.RECEIPT_HEADER) is None
    body = json.loads(answer.content)
    assert set(body) == {"error"} and body["error"]["code"] == "auth.forbidden"
    assert spy.calls == []
    log = _log(enclave)
    assert log.size == 1
    raw = log.entry(0)
    entry = parse_entry(raw)
    assert entry.authorization.decision == "deny"
    assert entry.authorization.reason == "no-inference-for-researchers"
    assert entry.authorization.policies == ("no-inference-for-researchers",)
    assert entry.prompt is None and entry.answer is None and entry.params is None
    assert entry.tenant == "st-marys"
    assert entry.user == pseudonym(_key(enclave), "user", "dr-alice")  # the hospital can tell
    for secret in (PROMPT.encode(), b"Ramsay", b"MRN", b"dr-alice"):
        assert secret not in raw
    # The operator's copy of the log says no more than the entry: a FHIR 'denied' event.
    event = audit_event(entry, 0, origin=log.origin)
    assert event["outcome"] == "4" and "no-inference-for-researchers" in event["outcomeDesc"]


def test_default_deny_is_recorded_too(enclave: Enclave, idp: Idp, spy: FakeEngine) -> None:
    assert _call(enclave, CHAT, token=idp.token(roles=("patient",))).status == 403
    entry = parse_entry(_log(enclave).entry(0))
    assert (entry.authorization.decision, entry.authorization.reason,
            entry.authorization.policies) == ("deny", "default-deny", ())
    assert spy.calls == []


def test_callers_without_a_verified_identity_leave_no_entry(enclave: Enclave) -> None:
    for token in (None, "not-a-token"):
        assert _call(enclave, CHAT, token=token).status == 401
    assert _log(enclave).size == 0  # nobody to pseudonymise: the operator log has the code


def test_an_allowed_inference_names_its_policies_and_opens_with_the_tenant_key(
        enclave: Enclave, idp: Idp) -> None:
    answer = _call(enclave, CHAT, token=idp.token())
    assert answer.status == 200 and answer.header(proto.RECEIPT_HEADER)
    entry = parse_entry(_log(enclave).entry(0))
    assert entry.authorization.decision == "allow"
    assert entry.authorization.reason == "model-infer-by-role"
    assert entry.authorization.policies == ("model-infer-by-role",)
    assert entry.prompt is not None and entry.answer is not None
    key = _key(enclave)
    open_commitment(key, "prompt", entry.salt,
                    commitment_input([{"role": "user", "content": PROMPT}]), entry.prompt)
    open_commitment(key, "answer", entry.salt, FAKE_ANSWER.encode(), entry.answer)


def test_stop_sequences_are_committed_with_the_prompt(enclave: Enclave, idp: Idp) -> None:
    body = {**CHAT, "stop": ["\n\n", "END"]}
    assert _call(enclave, body, token=idp.token()).status == 200
    entry = parse_entry(_log(enclave).entry(0))
    assert entry.prompt is not None
    messages = [{"role": "user", "content": PROMPT}]
    open_commitment(_key(enclave), "prompt", entry.salt,
                    commitment_input(messages, SamplingParams(stop=("\n\n", "END"))),
                    entry.prompt)
    with pytest.raises(MedclaveError) as err:
        open_commitment(_key(enclave), "prompt", entry.salt, commitment_input(messages),
                        entry.prompt)
    assert err.value.code == "audit.commitment_mismatch"


def test_every_decision_goes_through_the_trail_or_fails(policies: Path) -> None:
    trail = DecisionTrail()
    authorizer = Authorizer(policies, sink=trail)
    model = Model(id="m", tenant="st-marys", allowed_roles=("clinician",))
    user = {"uid": {"type": "User", "id": "u"},
            "attrs": {"tenant": {"__entity": {"type": "Tenant", "id": "st-marys"}},
                      "roles": ["clinician"]}, "parents": []}
    with trail.collect() as seen:
        decision = authorizer.decide('User::"u"', "infer", model, entities=[user], now=now())
    assert decision.allowed and [r.reasons for r in seen] == [("model-infer-by-role",)]
    # Outside a request there is no entry for the decision to go to: the decision fails.
    with pytest.raises(MedclaveError) as err:
        authorizer.decide('User::"u"', "infer", model, entities=[user], now=now())
    assert err.value.code == "internal"


def test_policy_ids_outside_the_entry_alphabet_are_digested() -> None:
    assert policy_code("Model-Infer-By-Role") == "model-infer-by-role"
    for odd in ("treat John Smith", "ärzte-only", "", "x" * 200):
        code = policy_code(odd)
        assert code.startswith("policy-sha256:") and len(code) == len("policy-sha256:") + 32


# --- where the key comes from ---------------------------------------------------------------


def test_the_key_file_must_be_private_and_a_key(tmp_path: Path) -> None:
    good = write_commitment_key(tmp_path / "good.key")
    assert FileCommitKeys(good).key_for("any").key == parse_commitment_key(good.read_bytes())
    loose = tmp_path / "loose.key"
    shutil.copy(good, loose)
    os.chmod(loose, 0o640)
    short = tmp_path / "short.key"
    short.write_bytes(b"0123456789\n")
    os.chmod(short, 0o600)
    link = tmp_path / "link.key"
    link.symlink_to(good)
    for path in (loose, short, link, tmp_path / "missing.key", tmp_path):
        with pytest.raises(InputError) as err:
            read_key_file(path)
        assert err.value.code == "config.invalid"


def test_a_key_file_is_refused_on_a_real_tee(tmp_path: Path) -> None:
    settings_ = EnclaveSettings(data_dir=tmp_path, commitment_key_file=write_commitment_key(
        tmp_path / "k"), insecure_no_auth=True)
    tee = HostPlatform("sev-snp", lambda n, r: None, True)  # type: ignore[arg-type,return-value]
    with pytest.raises(InputError) as err:
        build_commit_keys(settings_, tee, dict, now)
    assert err.value.code == "config.invalid"


def test_without_a_key_source_inference_is_refused_before_the_engine(
        tmp_path: Path, idp: Idp, spy: FakeEngine) -> None:
    enclave = start_enclave(tmp_path / "nokey", idp, engine=spy, commitment_key_file=None)
    try:
        answer = _call(enclave, CHAT, token=idp.token())
        assert answer.status == 503
        assert json.loads(answer.content)["error"]["code"] == "audit.commitment_key_unavailable"
        assert spy.calls == []
        # A refusal is still refused, unrecorded (its pseudonym needs the key).
        assert _call(enclave, CHAT, token=idp.token(roles=("patient",))).status == 403
        assert _call(enclave, None, token=idp.token(), path=proto.MODELS_PATH).status == 200
    finally:
        enclave.stop()


# --- what replay is given ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.text(max_size=40),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                     "content": st.text(max_size=20)}), min_size=1, max_size=3)),
    st.lists(st.text(min_size=1, max_size=5), max_size=3))
def test_committed_input_round_trips(value: str | list[dict[str, str]], stop: list[str]) -> None:
    data = commitment_input(value, SamplingParams(stop=tuple(stop)))
    assert parse_commitment_input(data) == (value, SamplingParams(stop=tuple(stop)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_anything_else_is_not_a_committed_input(data: bytes) -> None:
    try:
        value, params = parse_commitment_input(data)
    except MedclaveError as exc:
        assert exc.code == "input.malformed"
        return
    assert commitment_input(value, params) == data
