"""Replay reproduces a recorded inference and refuses a changed prompt, model, build or answer."""

from __future__ import annotations

import pytest

from medclave.audit.entry import Params
from medclave.audit.replay import ReplayEngine, replay
from medclave.errors import AuditError, MedclaveError
from tests.audit._builders import BUILD, MODEL, TENANT_KEY, fake_engine, make_entry

PROMPT = "Summarise the chart of patient 42"
ENGINE = ReplayEngine(fake_engine, MODEL, BUILD)


def test_replay_reproduces_the_commitment() -> None:
    entry = make_entry(42, prompt=PROMPT)
    result = replay(entry, PROMPT, ENGINE, TENANT_KEY)
    assert result.commitment == entry.answer
    assert result.answer == fake_engine(PROMPT, entry.params)


def test_changed_prompt_refused_before_running() -> None:
    ran: list[str] = []

    def spy(prompt: str, params: Params) -> str:
        ran.append(prompt)
        return fake_engine(prompt, params)

    entry = make_entry(42, prompt=PROMPT)
    with pytest.raises(AuditError) as err:
        replay(entry, PROMPT + ".", ReplayEngine(spy, MODEL, BUILD), TENANT_KEY)
    assert err.value.code == "audit.commitment_mismatch"
    assert ran == []


def test_other_model_or_build_refused() -> None:
    entry = make_entry(42, prompt=PROMPT)
    for engine in (ReplayEngine(fake_engine, "0" * 64, BUILD),
                   ReplayEngine(fake_engine, MODEL, "llama.cpp-b9999-cuda")):
        with pytest.raises(AuditError) as err:
            replay(entry, PROMPT, engine, TENANT_KEY)
        assert err.value.code == "audit.replay_engine_mismatch"


def test_different_answer_refused() -> None:
    entry = make_entry(42, prompt=PROMPT)
    drifting = ReplayEngine(lambda p, params: fake_engine(p, params) + " ", MODEL, BUILD)
    with pytest.raises(AuditError) as err:
        replay(entry, PROMPT, drifting, TENANT_KEY)
    assert err.value.code == "audit.replay_mismatch"
    with pytest.raises(AuditError) as err:
        replay(entry, PROMPT, ENGINE, bytes(32))  # another tenant's key opens nothing
    assert err.value.code == "audit.commitment_mismatch"


def test_refused_request_has_nothing_to_replay() -> None:
    entry = make_entry(1, decision="deny")
    with pytest.raises(AuditError) as err:
        replay(entry, "Summarise the chart of patient 1", ENGINE, TENANT_KEY)
    assert err.value.code == "audit.replay_mismatch"


def test_engine_failure_is_reported_as_such() -> None:
    def broken(prompt: str, params: Params) -> str:
        raise RuntimeError("out of memory")

    with pytest.raises(MedclaveError) as err:
        replay(make_entry(42, prompt=PROMPT), PROMPT, ReplayEngine(broken, MODEL, BUILD),
               TENANT_KEY)
    assert err.value.code == "enclave.engine_failed"
