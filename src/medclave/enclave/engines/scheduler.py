"""Fair turns at an engine that runs one generation at a time (issue 10 §4).

llama.cpp's context is not thread-safe, so the embedded engine generates one answer at a time,
and before this module its queue was a thread pool's: first come, first served, unbounded. One
tenant sending forty requests made everyone else wait for all forty, and a request whose client
had left waited its turn and then ran to the end.

:class:`FairScheduler` is that engine's worker instead. Waiting generations are kept per tenant,
and within a tenant per user, and turns go round: the next generation is the oldest request of
the waiting user served least recently, of the waiting tenant served least recently (a tenant or
user with nothing waiting or running is forgotten, and counts as never served when it comes
back). A tenant flooding the queue therefore delays another tenant's request by at most one
generation per tenant ahead of it, whatever the size of the flood; the same holds between the
users of one tenant. Turns are counted in generations, not tokens: one long generation holds
the engine until it ends (``max_tokens_limit`` bounds it), and cancellation (below) ends it
early when nobody is waiting for it.

The queue is bounded (``max_queued``): one more is refused at once with ``enclave.queue_full``
(429, ``Retry-After``), answered inside the encapsulation like ``enclave.busy``. A queued
generation whose :class:`~medclave.enclave.engines.base.Cancel` is set (its client left) leaves
the queue at once and never starts; a running one is told through the same signal and stops at
its next token (the engine's business: :meth:`Generation.token` returns False).

:meth:`FairScheduler.counters` reports what tests and operators assert on instead of wall time:
generations started, finished, stopped early, dropped from the queue, failed, refused, tokens
generated, queue depth, and the last generations in the order they started.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, TypeVar

from medclave.enclave.engines.base import Generation
from medclave.enclave.limits import Busy

T = TypeVar("T")

QUEUE_FULL = "enclave.queue_full"
HISTORY = 256  # generations remembered for counters().history (in memory only)

Outcome = Literal["running", "finished", "cancelled", "dropped", "failed"]


@dataclass(frozen=True)
class Started:
    """One generation in :attr:`EngineCounters.history`, in the order generations started
    (``dropped`` ones never started and are not listed)."""

    tenant: str
    user: str
    outcome: Outcome
    tokens: int


@dataclass(frozen=True)
class EngineCounters:
    """A snapshot. ``cancelled``: started, then stopped early because its client left;
    ``dropped``: left the queue before starting; ``rejected``: refused, the queue being full."""

    started: int
    finished: int
    cancelled: int
    dropped: int
    failed: int
    rejected: int
    tokens: int
    queued: int
    running: int
    history: tuple[Started, ...]


class _Job:
    __slots__ = ("future", "generation", "key", "seq", "work")

    def __init__(self, work: Callable[[], object], generation: Generation, seq: int) -> None:
        self.work = work
        self.generation = generation
        self.key = (generation.tenant, generation.user)
        self.seq = seq  # arrival order, for ties
        self.future: Future[object] = Future()


class _Record:
    """What the history keeps of a started job: names and counts, never its work, result or
    generation (whose cancel callbacks reach the request's content) once it has ended."""

    __slots__ = ("live", "outcome", "tenant", "tokens", "user")

    def __init__(self, generation: Generation) -> None:
        self.tenant, self.user = generation.tenant, generation.user
        self.live: Generation | None = generation
        self.outcome: Outcome = "running"
        self.tokens = 0

    def snapshot(self) -> Started:
        tokens = self.live.tokens if self.live is not None else self.tokens
        return Started(self.tenant, self.user, self.outcome, tokens)


class FairScheduler:
    """Runs submitted work on ``parallel`` threads of its own, fairly (see the module)."""

    def __init__(self, *, parallel: int = 1, max_queued: int = 64, retry_after: int = 1,
                 name: str = "medclave-engine") -> None:
        if parallel < 1 or max_queued < 0:
            raise ValueError("parallel is at least 1 and max_queued at least 0")
        self.max_queued = max_queued
        self._retry_after = retry_after
        self._lock = threading.Condition()
        self._jobs: dict[tuple[str, str], deque[_Job]] = {}  # waiting, per (tenant, user)
        self._waiting: dict[str, dict[str, None]] = {}  # tenant -> its users with jobs waiting
        self._active: dict[tuple[str, str], int] = {}  # running, per (tenant, user)
        self._last_tenant: dict[str, int] = {}  # the turn each known tenant last had
        self._last_user: dict[tuple[str, str], int] = {}
        self._turn = 0
        self._seq = 0
        self._queued = 0
        self._running = 0
        self._closed = False
        self._counts = dict.fromkeys(("started", "finished", "cancelled", "dropped", "failed",
                                      "rejected", "tokens"), 0)
        self._history: deque[_Record] = deque(maxlen=HISTORY)  # in start order
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(parallel)]
        for thread in self._threads:
            thread.start()

    # --- submitting ------------------------------------------------------------------------------

    def submit(self, work: Callable[[], T], generation: Generation | None = None, *,
               bounded: bool = True) -> Future[T]:
        """Queue ``work`` for ``generation`` (None: the engine's own work, key ``("", "")``);
        its result or exception comes back through the future, which is cancelled if the
        generation is cancelled before it starts. ``enclave.queue_full`` (429) when
        ``bounded`` and ``max_queued`` generations already wait."""
        with self._lock:
            if self._closed or not any(t.is_alive() for t in self._threads):
                raise RuntimeError("the engine is closed")
            if bounded and self._queued >= self.max_queued:
                self._counts["rejected"] += 1
                raise Busy(QUEUE_FULL, f"{self._queued} generations are waiting for the engine",
                           retry_after=self._retry_after)
            self._seq += 1
            job = _Job(work, generation or Generation("", ""), self._seq)
            tenant, user = job.key
            self._jobs.setdefault(job.key, deque()).append(job)
            self._waiting.setdefault(tenant, {})[user] = None
            self._queued += 1
            self._lock.notify()
        job.generation.cancel.on_set(lambda: self._drop(job))
        return job.future  # type: ignore[return-value]  # Future[object] holds a T

    def _drop(self, job: _Job) -> None:
        """The generation was cancelled: out of the queue, if it is still there."""
        with self._lock:
            queue = self._jobs.get(job.key)
            if queue is None or job not in queue:
                return  # started (the engine stops it) or already gone
            queue.remove(job)
            self._queued -= 1
            self._counts["dropped"] += 1
            self._tidy(job.key)
        job.future.cancel()

    def _tidy(self, key: tuple[str, str]) -> None:
        """Forget what no longer waits or runs (under the lock): the bookkeeping is bounded by
        the generations waiting and running."""
        tenant, user = key
        if not self._jobs.get(key):
            self._jobs.pop(key, None)
            users = self._waiting.get(tenant)
            if users is not None:
                users.pop(user, None)
                if not users:
                    del self._waiting[tenant]
            if key not in self._active:
                self._last_user.pop(key, None)
        if tenant not in self._waiting and not any(t == tenant for t, _ in self._active):
            self._last_tenant.pop(tenant, None)

    # --- the workers -----------------------------------------------------------------------------

    def _next(self) -> _Job | None:
        """The next job (under the lock; see the module); None once closed and drained."""
        while not self._waiting:
            if self._closed:
                return None
            self._lock.wait()

        def oldest(tenant: str, user: str) -> int:
            return self._jobs[(tenant, user)][0].seq

        tenant = min(self._waiting, key=lambda t: (
            self._last_tenant.get(t, -1), min(oldest(t, u) for u in self._waiting[t])))
        user = min(self._waiting[tenant], key=lambda u: (
            self._last_user.get((tenant, u), -1), oldest(tenant, u)))
        job = self._jobs[(tenant, user)].popleft()
        self._queued -= 1
        self._turn += 1
        self._last_tenant[tenant] = self._last_user[job.key] = self._turn
        self._active[job.key] = self._active.get(job.key, 0) + 1
        self._tidy(job.key)
        return job

    def _work(self) -> None:
        while True:
            with self._lock:
                job = self._next()
                if job is None:
                    return
                if not job.future.set_running_or_notify_cancel():
                    self._finished(job.key)
                    continue
                self._running += 1
                self._counts["started"] += 1
                record = _Record(job.generation)
                self._history.append(record)
            work, future, key, job = job.work, job.future, job.key, None  # only what runs
            try:
                result = work()
            except BaseException as exc:  # handed to the submitter
                self._end(record, key, "failed")
                future.set_exception(exc)
            else:
                self._end(record, key, "finished")
                future.set_result(result)
            # Not held while waiting for the next job: the work and result carry content.
            work = future = result = None  # type: ignore[assignment]

    def _finished(self, key: tuple[str, str]) -> None:
        self._active[key] -= 1
        if not self._active[key]:
            del self._active[key]
        self._tidy(key)

    def _end(self, record: _Record, key: tuple[str, str], outcome: Outcome) -> None:
        """``outcome`` unless the generation stopped early because it was cancelled."""
        with self._lock:
            self._finished(key)
            generation = record.live
            assert generation is not None
            self._running -= 1
            record.live, record.tokens = None, generation.tokens
            record.outcome = "cancelled" if generation.stopped else outcome
            self._counts[record.outcome] += 1
            self._counts["tokens"] += record.tokens

    # --- reporting and closing -------------------------------------------------------------------

    def counters(self) -> EngineCounters:
        with self._lock:
            history = tuple(record.snapshot() for record in self._history)
            c = self._counts
            live = sum(h.tokens for h in history if h.outcome == "running")
            return EngineCounters(
                started=c["started"], finished=c["finished"], cancelled=c["cancelled"],
                dropped=c["dropped"], failed=c["failed"], rejected=c["rejected"],
                tokens=c["tokens"] + live, queued=self._queued, running=self._running,
                history=history)

    def close(self) -> None:
        """Stop taking work; the workers finish what is queued, then end."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout=30)
