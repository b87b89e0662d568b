"""Several enclave replicas behind one load balancer: attest each, route, fail over.

The proxy knows the balancer's address and the replicas' names. Each replica has its own
:class:`~medclave.client.session.EnclaveSession` to that address, whose every request carries
``medclave-replica: NAME`` outside the encapsulation, so the balancer (HAProxy,
``ops/balancer.py``) sends it to that replica and no other: the replica's evidence, its OHTTP
key configuration and every request encapsulated to that key. The balancer sees ciphertext and
a replica's name. A request it sent elsewhere would not open there (another key), so a wrong
route fails closed; nothing binds the name to the hardware, so a balancer that sends two names
to one enclave only costs capacity.

Attestation: every replica is attested (in parallel) before the first request, and again on the
session's schedule (``TrustWatch`` calls :meth:`ReplicaSet.reattest_if_due`), when its OHTTP key
changes (it answers ``crypto.key_unknown`` or, restarted with the same key id,
``crypto.decrypt_failed``: the session attests again and retries once), and before a replica
that was down is used again. A replica whose evidence does not verify is never sent a request;
it is attested again every ``retry_failed_after``.

Routing: among the verified replicas that are up, the one with the fewest requests in flight
(ties in turn), as LLM requests are long and uneven.

Failover (docs/scaling-out.md): a request goes to another replica only when it was certainly
never sent: the connection to the balancer never opened (httpx ``ConnectError`` or
``ConnectTimeout``), the balancer answered its own 503 with ``medclave-not-forwarded`` (it could
connect to no server of that replica: refused, reset during the handshake or none up; HAProxy
retries only connection failures, ``retry-on conn-failure``), or the replica failed attestation
before the request was encapsulated. Any failure after a byte of the request left (a reset or a
read timeout mid-request, the balancer's 502 or 504) is ``client.upstream_lost`` and is not
retried: the request may have reached the engine and produced an answer and an audit entry.
Each request tries each replica at most once; when none is left, ``client.no_replica``.

In a mesh (``tls_for``: each replica its own mutual TLS context), the balancer passes TLS
through and routes on the server name (``ops/balancer.py``), so it cannot say "not forwarded":
a request was certainly never sent when the TLS handshake with the replica did not complete
(the balancer reached no server and closed the connection: ``mesh.handshake_failed``, or a
reset: ``ConnectError``) or the replica's identity was refused (``mesh.*``: a misrouting
balancer is ``mesh.peer_unexpected``). The request goes after the handshake only.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from medclave.attestation import AppraisalPolicy
from medclave.attestation.collateral import Collateral
from medclave.client.session import (
    Abort,
    EnclaveSession,
    InnerResponse,
    StreamedResponse,
    summary,
)
from medclave.client.verify import VerifiedEnclave
from medclave.errors import ClientError, MedclaveError
from medclave.protocol import inference as proto
from medclave.util.clock import Clock, system_clock

log = logging.getLogger("medclave.proxy.replicas")

T = TypeVar("T")


class Enclaves(Protocol):
    """What the proxy and ``TrustWatch`` use of an upstream: one :class:`EnclaveSession`, or
    a :class:`ReplicaSet` of them."""

    @property
    def enclave(self) -> VerifiedEnclave | None: ...

    def attest(self) -> VerifiedEnclave: ...

    def current(self) -> VerifiedEnclave: ...

    def reattest_if_due(self) -> VerifiedEnclave | None: ...

    def update_trust(self, *, policy: AppraisalPolicy | None = None,
                     collateral: Collateral | None = None) -> VerifiedEnclave: ...

    def fail(self, code: str, detail: str) -> None: ...

    def trust_state(self) -> dict[str, Any]: ...

    def request(self, method: str, path: str, *, body: bytes = b"",
                authorization: str | None = None, dpop: str | None = None,
                abort: Abort | None = None, headers: tuple[tuple[str, str], ...] = ()
                ) -> InnerResponse: ...

    def stream(self, method: str, path: str, *, body: bytes = b"",
               authorization: str | None = None, dpop: str | None = None,
               headers: tuple[tuple[str, str], ...] = ()) -> StreamedResponse: ...

    def upload(self, path: str, *, body: bytes, content_type: str,
               authorization: str | None = None, dpop: str | None = None,
               audio: bool = False) -> InnerResponse: ...

    def close(self) -> None: ...


@dataclass
class _Replica:
    name: str
    session: EnclaveSession
    in_flight: int = 0
    # Not reachable (a request or attestation certainly not sent): skipped until this time,
    # then attested again before any request goes to it.
    down_until: datetime | None = None
    needs_attestation: bool = True
    # Why its latest attestation failed (code, detail, when); the session records failed
    # re-attestations itself, not a first attestation that fails.
    refused: tuple[str, str, datetime] | None = None
    unreachable: bool = False  # the refusal was "not reached": tried again once it is up


def _lost(exc: MedclaveError) -> bool:
    """A failure that may have come after the request reached the replica's engine."""
    if exc.code != "client.upstream_failed" or exc.context.get("sent") is False:
        return False
    # A transport failure after the connection opened, or an answer that is not the
    # enclave's own (the balancer's 502 or 504: the replica broke or timed out mid-request).
    return exc.context.get("sent") is True or "answered" in exc.context


class ReplicaSet:
    """``ReplicaSet(balancer_url, ["r1", "r2"], policy)``: thread-safe; one per proxy. Has the
    methods of :class:`EnclaveSession` that the proxy and ``TrustWatch`` use."""

    def __init__(self, url: str, names: Iterable[str], policy: AppraisalPolicy, *,
                 sim_roots: frozenset[str] = frozenset(),
                 trusted_roots: frozenset[str] | None = None,
                 reattest_after: timedelta = timedelta(minutes=5),
                 retry_failed_after: timedelta = timedelta(seconds=30),
                 down_after_failure: timedelta = timedelta(seconds=5),
                 timeout: float = 300.0, collateral: Collateral | None = None,
                 require_receipts: bool = True, clock: Clock = system_clock,
                 tls: ssl.SSLContext | None = None,
                 tls_for: Callable[[str], ssl.SSLContext] | None = None) -> None:
        """``tls``: one TLS context for every replica; ``tls_for``: each replica's own (the
        mesh: its server name for the balancer and the one identity it may present)."""
        self._clock = clock
        self._retry_failed_after = retry_failed_after
        self._down_after_failure = down_after_failure
        self._lock = threading.Lock()
        self._attesting = threading.Lock()
        self._turn = 0
        self._replicas = [
            _Replica(name, EnclaveSession(
                url, policy, sim_roots=sim_roots, trusted_roots=trusted_roots,
                reattest_after=reattest_after, retry_failed_after=retry_failed_after,
                timeout=timeout, collateral=collateral, require_receipts=require_receipts,
                clock=clock, tls=tls_for(name) if tls_for is not None else tls,
                outer_headers={proto.REPLICA_HEADER: name}))
            for name in names]
        if not self._replicas:
            raise ClientError("client.no_replica", "no replica named")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self._replicas]

    def session(self, name: str) -> EnclaveSession:
        return next(r.session for r in self._replicas if r.name == name)

    # --- attestation ---------------------------------------------------------------------------

    def _attest(self, replica: _Replica) -> VerifiedEnclave | None:
        """Attest one replica; a failure is recorded (status) and marks it unusable."""
        try:
            enclave = replica.session.attest()
        except MedclaveError as exc:
            with self._lock:
                replica.refused = (exc.code, exc.detail, self._clock())
                replica.unreachable = exc.context.get("sent") is False
                if replica.unreachable:
                    replica.down_until = self._clock() + self._down_after_failure
            log.warning("replica %s not verified: %s", replica.name, exc.code)
            return None
        with self._lock:
            replica.refused = None
            replica.down_until = None
            replica.needs_attestation = False
        return enclave

    def _due(self, replica: _Replica, now: datetime) -> bool:
        """Whether the replica should be attested before it is used (or counted as down)."""
        if replica.down_until is not None and now < replica.down_until:
            return False
        if (replica.refused is not None and not replica.unreachable
                and now - replica.refused[2] < self._retry_failed_after):
            return False  # evidence refused: attested again every retry_failed_after
        return replica.needs_attestation or replica.session.enclave is None

    def _attest_due(self) -> None:
        """Attest, in parallel, every replica that is due (all of them, the first time). One
        round at a time: requests arriving together wait for it rather than each attesting
        every replica again."""
        with self._attesting:
            now = self._clock()
            with self._lock:
                due = [r for r in self._replicas if self._due(r, now)]
            if len(due) == 1:
                self._attest(due[0])
            elif due:
                with ThreadPoolExecutor(max_workers=min(8, len(due)),
                                        thread_name_prefix="medclave-attest") as pool:
                    list(pool.map(self._attest, due))

    def _usable(self, replica: _Replica, now: datetime) -> bool:
        return (replica.session.enclave is not None and not replica.needs_attestation
                and (replica.down_until is None or now >= replica.down_until))

    def attest(self) -> VerifiedEnclave:
        """Attest every replica that is due now; some verified replica's attestation."""
        return self.current()

    def current(self) -> VerifiedEnclave:
        """Some verified replica's attestation, attesting every replica that is due first (the
        proxy's readiness); ``client.no_replica`` when none passes."""
        self._attest_due()
        now = self._clock()
        with self._lock:
            for r in self._replicas:
                if self._usable(r, now) and r.session.enclave is not None:
                    return r.session.enclave
        raise ClientError("client.no_replica", self._why())

    def _why(self) -> str:
        parts = []
        for r in self._replicas:
            state = r.session.trust_state()
            code = (state.get("code") if state["state"] == "failed"
                    else r.refused[0] if r.refused else "down")
            parts.append(f"{r.name}: {code}")
        return "; ".join(parts)

    @property
    def enclave(self) -> VerifiedEnclave | None:
        """A verified replica's last attestation (the first one verified), if any."""
        return next((r.session.enclave for r in self._replicas
                     if r.session.enclave is not None), None)

    def reattest_if_due(self) -> VerifiedEnclave | None:
        """The schedule (``TrustWatch``): each replica's own re-attestation when due, and the
        attestation of replicas that failed or were down, once their wait is over."""
        for r in self._replicas:
            if r.session.enclave is not None or r.session.trust_state()["state"] == "failed":
                try:
                    r.session.reattest_if_due()
                except MedclaveError as exc:  # recorded by the session: status says why
                    log.warning("replica %s failed its re-attestation: %s", r.name, exc.code)
        self._attest_due()
        return self.enclave

    def update_trust(self, *, policy: AppraisalPolicy | None = None,
                     collateral: Collateral | None = None) -> VerifiedEnclave:
        """New verifier inputs: every replica is attested again under them at once; a replica
        that no longer passes gets no more requests. Raises when none passes."""
        first: MedclaveError | None = None
        for r in self._replicas:
            try:
                r.session.update_trust(policy=policy, collateral=collateral)
            except MedclaveError as exc:
                first = first or exc
                with self._lock:
                    r.refused = (exc.code, exc.detail, self._clock())
                continue
            with self._lock:
                r.refused = None
                r.needs_attestation = False
                r.down_until = None
        enclave = self.enclave
        if enclave is None:
            raise first or ClientError("client.no_replica", self._why())
        return enclave

    def fail(self, code: str, detail: str) -> None:
        for r in self._replicas:
            r.session.fail(code, detail)

    def trust_state(self) -> dict[str, Any]:
        """``verified`` when at least one replica is, else ``failed`` (with the first cause) or
        ``unverified``; ``replicas``: each one's own state."""
        states = {r.name: self._replica_trust(r) for r in self._replicas}
        if any(s["state"] == "verified" for s in states.values()):
            overall: dict[str, Any] = {"state": "verified"}
        else:
            failed = [s for s in states.values() if s["state"] == "failed"]
            overall = ({"state": "failed", "code": failed[0]["code"],
                        "detail": failed[0]["detail"], "since": failed[0]["since"]}
                       if failed else {"state": "unverified"})
        overall["replicas"] = states
        return overall

    def _replica_trust(self, r: _Replica) -> dict[str, Any]:
        state = r.session.trust_state()
        if state["state"] != "failed" and r.refused is not None:
            code, detail, at = r.refused
            state = {"state": "failed", "code": code, "detail": detail, "since": at.isoformat()}
        return state

    def replicas(self) -> dict[str, dict[str, Any]]:
        """What ``/medclave/status`` shows per replica: its trust, its verified evidence (each
        has its own OHTTP key and audit key), whether it is up and its requests in flight."""
        out: dict[str, dict[str, Any]] = {}
        for r in self._replicas:
            enclave = r.session.enclave
            out[r.name] = {
                "trust": self._replica_trust(r), "enclave": dict(summary(enclave)),
                # Down from a failure until an attestation through the balancer passes again.
                "up": r.down_until is None, "in_flight": r.in_flight}
        return out

    # --- routing -------------------------------------------------------------------------------

    def _pick(self, tried: set[str]) -> _Replica | None:
        """The usable replica with the fewest requests in flight (ties in turn); attests the
        replicas that are due first when no usable one is left."""
        for attempt in (0, 1):
            now = self._clock()
            with self._lock:
                ready = [r for r in self._replicas
                         if r.name not in tried and self._usable(r, now)]
                if ready:
                    n = len(self._replicas)
                    self._turn = (self._turn + 1) % n
                    order = {r.name: (i - self._turn) % n for i, r in enumerate(self._replicas)}
                    chosen = min(ready, key=lambda r: (r.in_flight, order[r.name]))
                    chosen.in_flight += 1
                    return chosen
            if attempt == 0:
                self._attest_due()
        return None

    def _done(self, replica: _Replica) -> None:
        with self._lock:
            replica.in_flight -= 1

    def _down(self, replica: _Replica, exc: MedclaveError) -> None:
        with self._lock:
            replica.down_until = self._clock() + self._down_after_failure
            replica.needs_attestation = True
        log.warning("replica %s is down (%s): requests go to the others", replica.name,
                    exc.detail)

    def _route(self, call: Callable[[EnclaveSession], T], *, streamed: bool = False
               ) -> tuple[_Replica, T]:
        tried: set[str] = set()
        skipped: list[str] = []
        while True:
            replica = self._pick(tried)
            if replica is None:
                raise ClientError("client.no_replica", "; ".join(skipped) or self._why())
            tried.add(replica.name)
            keep = False
            try:
                try:
                    replica.session.current()  # a due re-attestation: before anything is sent
                except MedclaveError as exc:
                    if exc.context.get("sent") is False:
                        self._down(replica, exc)
                    skipped.append(f"{replica.name}: {exc.code}")
                    continue
                try:
                    result = call(replica.session)
                except MedclaveError as exc:
                    if exc.context.get("sent") is False:
                        self._down(replica, exc)  # certainly not sent: the next replica
                        skipped.append(f"{replica.name}: not reached ({exc.code})")
                        continue
                    if _lost(exc):
                        self._down(replica, exc)
                        raise ClientError("client.upstream_lost",
                                          f"replica {replica.name}: {exc.detail}") from exc
                    raise
                keep = streamed
                return replica, result
            finally:
                if not keep:
                    self._done(replica)

    def request(self, method: str, path: str, *, body: bytes = b"",
                authorization: str | None = None, dpop: str | None = None,
                abort: Abort | None = None, headers: tuple[tuple[str, str], ...] = ()
                ) -> InnerResponse:
        replica, answer = self._route(lambda s: s.request(
            method, path, body=body, authorization=authorization, dpop=dpop, abort=abort,
            headers=headers))
        return dataclasses.replace(answer, replica=replica.name)

    def stream(self, method: str, path: str, *, body: bytes = b"",
               authorization: str | None = None, dpop: str | None = None,
               headers: tuple[tuple[str, str], ...] = ()) -> StreamedResponse:
        replica, stream = self._route(lambda s: s.stream(
            method, path, body=body, authorization=authorization, dpop=dpop, headers=headers),
            streamed=True)
        stream.replica = replica.name
        stream.on_close(lambda: self._done(replica))  # in flight until the stream ends
        return stream

    def upload(self, path: str, *, body: bytes, content_type: str,
               authorization: str | None = None, dpop: str | None = None,
               audio: bool = False) -> InnerResponse:
        replica, answer = self._route(lambda s: s.upload(
            path, body=body, content_type=content_type, authorization=authorization,
            dpop=dpop, audio=audio))
        return dataclasses.replace(answer, replica=replica.name)

    def close(self) -> None:
        for r in self._replicas:
            r.session.close()


def replica_names(value: Iterable[str]) -> tuple[str, ...]:
    """Checked replica names: each matches ``REPLICA_NAME_PATTERN`` (it travels in a header and
    names a balancer backend), none twice; ``ValueError`` says which."""
    import re

    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or re.fullmatch(proto.REPLICA_NAME_PATTERN, name) is None:
            raise ValueError(f"replica name {name!r} must match {proto.REPLICA_NAME_PATTERN} "
                             "(lower-case letters, digits and '-', at most 32)")
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise ValueError(f"replica {seen[0]!r} is named twice")
    return names
