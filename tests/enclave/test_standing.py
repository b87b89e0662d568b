"""The enclave's standing monitor: a signed "revoked" stops serving at once; brokers that do not
answer good for longer than the max age stop it too (fail closed); dropped keys open nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from medclave.enclave.keys import KeyRing
from medclave.enclave.standing import StandingCheck, StandingMonitor
from medclave.errors import EnclaveError, KbsError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Broker:
    """What a broker's standing check answers, as the test sets it."""

    def __init__(self) -> None:
        self.answer: str | Exception = "good"
        self.asked = 0

    def ask(self) -> str:
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _monitor(*brokers: Broker, max_age: float = 60) -> tuple[StandingMonitor, list[str], Clock]:
    clock, revoked = Clock(), []
    checks = [StandingCheck(f"kbs:///o{i}/model-key/m", b.ask) for i, b in enumerate(brokers)]
    return (StandingMonitor(checks, revoked.append, interval=1, max_age=max_age, clock=clock),
            revoked, clock)


def test_revoked_by_any_broker_stops_serving_at_once() -> None:
    a, b = Broker(), Broker()
    monitor, revoked, _ = _monitor(a, b)
    assert monitor.check_once() == "good" and revoked == []
    b.answer = "revoked"
    assert monitor.check_once() == "revoked"
    assert revoked == ["revoked by the broker for kbs:///o1/model-key/m"]
    assert monitor.check_once() == "revoked" and len(revoked) == 1  # once, for good
    assert (a.asked, b.asked) == (2, 2)


def test_unreachable_brokers_stop_serving_after_the_max_age() -> None:
    a = Broker()
    monitor, revoked, clock = _monitor(a, max_age=60)
    assert monitor.check_once() == "good"
    a.answer = KbsError("kbs.unavailable", "down")
    clock.now += 59
    assert monitor.check_once() == "unknown" and revoked == []
    a.answer = "good"  # back in time: the clock restarts
    assert monitor.check_once() == "good"
    a.answer = KbsError("kbs.answer_unauthenticated", "forged")
    clock.now += 61
    assert monitor.check_once() == "revoked"
    assert "kbs.answer_unauthenticated" in revoked[0]


def test_an_unexpected_answer_counts_as_no_answer() -> None:
    a = Broker()
    a.answer = "maybe"
    monitor, revoked, clock = _monitor(a, max_age=10)
    assert monitor.check_once() == "unknown"
    clock.now += 11
    assert monitor.check_once() == "revoked" and revoked


def test_dropped_ohttp_keys_open_nothing() -> None:
    ring = KeyRing(lambda: datetime.now(UTC))
    assert len(ring.usable()) == 1
    ring.drop()
    assert ring.usable() == []
    with pytest.raises(EnclaveError) as err:
        _ = ring.config
    assert err.value.code == "enclave.revoked"
