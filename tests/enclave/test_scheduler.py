"""Issue 10 §4: the engine's queue is fair, bounded, and lets go of requests nobody waits for.

The attack: llama.cpp's queue was a one-thread pool's, first come first served: one tenant's
flood made every other tenant wait for all of it, and a request whose client had left still ran
to its end. Here the scheduler is driven directly; every check is on its counters and on the
order generations started, never on time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future

import pytest

from medclave.enclave.engines.base import Delta, Generation, generation_scope, run_streaming
from medclave.enclave.engines.scheduler import FairScheduler
from medclave.enclave.limits import Busy
from medclave.errors import CATALOGUE


class Gate:
    """Work that waits for the test: the first job holds the engine while the queue fills."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self) -> str:
        self.entered.set()
        assert self.open.wait(30), "the test never opened the gate"
        return "gate"


@pytest.fixture
def scheduler() -> Iterator[FairScheduler]:
    s = FairScheduler(parallel=1, max_queued=16, retry_after=7, name="test-fair")
    yield s
    s.close()


def _hold(scheduler: FairScheduler) -> tuple[Gate, Future[str]]:
    gate = Gate()
    held = scheduler.submit(gate, Generation("holder", "h"))
    assert gate.entered.wait(30)
    return gate, held


def _order(scheduler: FairScheduler) -> list[tuple[str, str]]:
    return [(h.tenant, h.user) for h in scheduler.counters().history]


def test_a_flooding_tenant_does_not_make_another_wait_for_its_backlog(
        scheduler: FairScheduler) -> None:
    gate, held = _hold(scheduler)
    flood = [scheduler.submit(lambda: "a", Generation("tenant-a", "u")) for _ in range(6)]
    late = scheduler.submit(lambda: "b", Generation("tenant-b", "v"))
    assert scheduler.counters().queued == 7
    gate.open.set()
    assert late.result(30) == "b" and [f.result(30) for f in flood] == ["a"] * 6
    assert held.result(30) == "gate"
    order = _order(scheduler)
    # First come, first served would give tenant-b the 8th turn; round-robin gives it the 3rd:
    # one of tenant-a's before it (tenant-a was waiting first), none of the rest.
    assert order[:3] == [("holder", "h"), ("tenant-a", "u"), ("tenant-b", "v")]
    assert order[3:] == [("tenant-a", "u")] * 5
    counters = scheduler.counters()
    assert (counters.started, counters.finished, counters.queued, counters.running) == (8, 8, 0, 0)


def test_users_of_one_tenant_take_turns_too(scheduler: FairScheduler) -> None:
    gate, _ = _hold(scheduler)
    for _ in range(4):
        scheduler.submit(lambda: None, Generation("st-marys", "flooder"))
    scheduler.submit(lambda: None, Generation("st-marys", "patient"))
    scheduler.submit(lambda: None, Generation("st-judes", "other"))
    gate.open.set()
    done = scheduler.submit(lambda: None, Generation("st-marys", "flooder"))
    done.result(30)
    order = _order(scheduler)[1:]
    # Tenants alternate (st-marys, st-judes); within st-marys, its users alternate.
    assert order[:4] == [("st-marys", "flooder"), ("st-judes", "other"),
                         ("st-marys", "patient"), ("st-marys", "flooder")]


def test_a_full_queue_is_refused_with_retry_after() -> None:
    scheduler = FairScheduler(parallel=1, max_queued=2, retry_after=7, name="test-full")
    try:
        gate, _ = _hold(scheduler)
        waiting = [scheduler.submit(lambda: None, Generation("t", "u")) for _ in range(2)]
        with pytest.raises(Busy) as refused:
            scheduler.submit(lambda: None, Generation("t", "other"))
        assert refused.value.code == "enclave.queue_full"
        assert CATALOGUE["enclave.queue_full"].status == 429
        assert refused.value.headers() == [("retry-after", "7")]
        assert scheduler.counters().rejected == 1
        # The engine's own work (closing it) is never refused.
        scheduler.submit(lambda: None, bounded=False)
        gate.open.set()
        for f in waiting:
            f.result(30)
    finally:
        scheduler.close()


def test_a_queued_generation_whose_client_left_never_runs(scheduler: FairScheduler) -> None:
    gate, _ = _hold(scheduler)
    ran: list[str] = []
    gone = Generation("t", "gone")
    future = scheduler.submit(lambda: ran.append("gone"), gone)
    kept = scheduler.submit(lambda: ran.append("kept"), Generation("t", "kept"))
    assert scheduler.counters().queued == 2
    gone.cancel.set()
    # Out of the queue at once, not when its turn comes.
    counters = scheduler.counters()
    assert (counters.queued, counters.dropped) == (1, 1)
    with pytest.raises(CancelledError):
        future.result(0)
    gate.open.set()
    kept.result(30)
    assert ran == ["kept"]
    assert ("t", "gone") not in _order(scheduler)


def test_a_running_generation_stops_at_its_next_token(scheduler: FairScheduler) -> None:
    generation = Generation("t", "u")
    produced = threading.Event()

    def work() -> int:
        while generation.token():  # one token per step, as an engine counts them
            produced.set()
        return generation.tokens

    future = scheduler.submit(work, generation)
    assert produced.wait(30)
    generation.cancel.set()
    tokens = future.result(30)
    counters = scheduler.counters()
    assert (counters.cancelled, counters.finished) == (1, 0)
    assert counters.history[-1].outcome == "cancelled"
    assert counters.history[-1].tokens == tokens == counters.tokens


def test_closing_a_queued_stream_takes_it_out_of_the_queue(scheduler: FairScheduler) -> None:
    gate, _ = _hold(scheduler)
    started: list[int] = []

    def produce(emit: Callable[[Delta], bool]) -> None:
        started.append(1)
        emit(Delta("", "stop"))

    generation = Generation("t", "reader")
    with generation_scope(generation):
        stream = run_streaming(produce, submit=lambda run: scheduler.submit(run, generation))
    assert scheduler.counters().queued == 1
    stream.close()
    assert scheduler.counters().queued == 0
    gate.open.set()
    scheduler.submit(lambda: None).result(30)
    assert started == [] and scheduler.counters().dropped == 1


def test_a_finished_stream_read_to_its_end_is_not_counted_as_cancelled(
        scheduler: FairScheduler) -> None:
    generation = Generation("t", "u")

    def produce(emit: Callable[[Delta], bool]) -> None:
        for word in ("a", " b"):
            generation.token()
            emit(Delta(word))
        emit(Delta("", "stop", 1, 2))

    with generation_scope(generation):
        stream = run_streaming(produce, submit=lambda run: scheduler.submit(run, generation))
    assert "".join(d.text for d in stream) == "a b"
    stream.close()  # as the enclave does once the answer has ended
    scheduler.submit(lambda: None).result(30)
    first = scheduler.counters().history[0]
    assert (first.outcome, first.tokens) == ("finished", 2)
    assert not generation.cancel.is_set()
