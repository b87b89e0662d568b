"""Authorization decision latency (issue 6 goals: p99 <= 0.5 ms for one decision, <= 5 ms to
filter 50 candidate documents for one user), and token verification, measured in one run.

Rows:
  cedar, empty policy set   cedarpy.is_authorized with no policies and no entities, pre-parsed:
                            the floor of one call into Cedar (the baseline of every ratio)
  decide                    Authorizer.decide for a verified Identity (principal built from the
                            token and the directory), the shipped policies and schema, a directory
                            of 2 tenants, 40 care teams, 1,000 patients, 5,000 documents
  filter 50 (ids)           filter_documents over 50 candidates already in the directory
  filter 50 (entities)      the same 50 given as Document objects (retrieval results not in the
                            directory): they are parsed and schema-checked per call
  token verify (EdDSA)      TokenVerifier.verify of an EdDSA token (replay cache on), ratio
                            against a bare Ed25519 signature check of the same bytes

Each figure is taken over MEDCLAVE_BENCH_AUTH_N calls per round (default 1000 for single calls; a
tenth for filters), the rows alternating in MEDCLAVE_BENCH_ROUNDS rounds (benchmarks._common).
Ratios are of CPU p50s; the goals are on each round's CPU p99 (a row of its own).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import cedarpy

from benchmarks._common import Goal, Report, env_int, fmt, interleave, percentile
from medclave.auth import (
    Authorizer,
    CareTeam,
    Document,
    EntityStore,
    Identity,
    IssuerConfig,
    Patient,
    StaticJwks,
    Tenant,
    TokenOptions,
    TokenVerifier,
    User,
)
from medclave.auth.issuer import SigningKey, TokenIssuer
from medclave.crypto.jose import b64url_decode, jwk_thumbprint

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


Stats = tuple[float, float, float, float]


def _latencies(fn: Callable[[], object], n: int) -> Stats:
    """(wall p50, wall p99, CPU p50, CPU p99) in milliseconds.

    CPU time is this thread's (CLOCK_THREAD_CPUTIME_ID): on a shared machine it leaves out time
    the scheduler gave to other processes, which the wall-clock p99 includes.
    """
    for _ in range(min(50, n)):
        fn()
    wall, cpu = [], []
    for _ in range(n):
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        fn()
        wall.append((time.perf_counter_ns() - w0) / 1e6)
        cpu.append((time.thread_time_ns() - c0) / 1e6)
    return (statistics.median(wall), percentile(wall, 0.99), statistics.median(cpu),
            percentile(cpu, 0.99))


Entity = Tenant | CareTeam | User | Patient | Document


def _directory() -> tuple[list[Entity], list[Document]]:
    entities: list[Entity] = []
    docs: list[Document] = []
    for t in ("st-mary", "northside"):
        entities.append(Tenant(id=t))
        for c in range(20):
            entities.append(CareTeam(id=f"{t}-team-{c}", tenant=t))
        for u in range(100):
            entities.append(
                User(
                    id=f"{t}-dr-{u}",
                    tenant=t,
                    roles=("clinician",),
                    care_teams=(f"{t}-team-{u % 20}",),
                )
            )
        for p in range(500):
            entities.append(Patient(id=f"{t}-p{p}", tenant=t, care_teams=(f"{t}-team-{p % 20}",)))
            for d in range(5):
                doc = Document(id=f"{t}-p{p}-d{d}", tenant=t, patient=f"{t}-p{p}", category="11506-3")
                entities.append(doc)
                docs.append(doc)
    return entities, docs


def main() -> None:
    n = env_int("MEDCLAVE_BENCH_AUTH_N", 1000)
    authorizer = Authorizer()
    entities, docs = _directory()
    schema = authorizer.policies.schema
    store = EntityStore(entities, schema=schema)
    empty_store = EntityStore([e for e in entities if not isinstance(e, Document)], schema=schema)
    identity = Identity(
        subject="st-mary-dr-3",
        tenant="st-mary",
        roles=("clinician",),
        issuer="bench",
        audience=("medclave",),
        token_id="x",
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )

    # 50 candidates for one user, half on the user's care team (team 3), as retrieval returns.
    def team(d: Document) -> int:
        return int(d.patient.rsplit("-p", 1)[1]) % 20

    local = [d for d in docs if d.tenant == "st-mary"]
    candidates = [d for d in local if team(d) == 3][:25] + [d for d in local if team(d) != 3][:25]
    ids = [d.uid for d in candidates]

    empty_ps = cedarpy.PolicySet.from_str("")
    empty_entities = cedarpy.Entities.from_json_str("[]")
    request = {
        "principal": 'User::"a"',
        "action": 'Action::"retrieve"',
        "resource": 'Document::"d"',
        "context": {},
    }
    kept = authorizer.filter_documents(identity, ids, entities=store, now=NOW)

    def empty_cedar() -> object:
        return cedarpy.is_authorized(request, empty_ps, empty_entities)

    def decide() -> object:
        return authorizer.decide(identity, "retrieve", ids[-1], entities=store, now=NOW)

    def filter_ids() -> object:
        return authorizer.filter_documents(identity, ids, entities=store, now=NOW)

    def filter_entities() -> object:
        return authorizer.filter_documents(identity, candidates, entities=empty_store, now=NOW)

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    issuer = TokenIssuer("bench", SigningKey(private_key=key, kid=jwk_thumbprint(key.public_key())))
    verifier = TokenVerifier(
        [IssuerConfig(issuer="bench", keys=StaticJwks.from_document(issuer.jwks()))],
        TokenOptions(audiences=frozenset({"medclave"})),
    )
    token = issuer.issue(sub="u", tenant="st-mary", roles=["clinician"], now=NOW)
    head, payload, sig = token.split(".")
    data, raw_sig, pub = f"{head}.{payload}".encode(), b64url_decode(sig), key.public_key()

    # name: (call, calls per round); each round's four statistics are kept, its CPU p50 compared
    measures: dict[str, tuple[Callable[[], object], int]] = {
        "cedar": (empty_cedar, n), "decide": (decide, n), "filter ids": (filter_ids, n // 10),
        "filter entities": (filter_entities, n // 10),
        "ed25519": (lambda: pub.verify(raw_sig, data), n),
        "token": (lambda: verifier.verify(token, now=NOW), n),
    }
    stats: dict[str, list[Stats]] = {name: [] for name in measures}

    def measure(name: str) -> float:
        fn, count = measures[name]
        stats[name].append(_latencies(fn, max(count, 10)))
        return stats[name][-1][2]

    interleave({name: functools.partial(measure, name) for name in measures})

    def series(name: str, which: int) -> list[float]:
        return [s[which] for s in stats[name]]

    def wall(name: str) -> str:
        return (f"wall p50 {fmt(statistics.median(series(name, 0)))}, "
                f"p99 {fmt(statistics.median(series(name, 1)))} ms")

    report = Report("auth", f"authorization and tokens; directory of {len(store)} entities, "
                    f"{len(kept)} of {len(ids)} candidates allowed")
    cedar, ed25519 = series("cedar", 2), series("ed25519", 2)
    report.baseline("cedar, empty policy set", cedar, "ms CPU", wall("cedar"))
    for name, label, limit in (("decide", "decide", 0.5), ("filter ids", "filter 50 (ids)", 5.0),
                               ("filter entities", "filter 50 (entities)", 5.0)):
        report.row(f"{label}, CPU p50", series(name, 2), "ms CPU", baseline=cedar,
                   note=wall(name))
        report.row(f"{label}, CPU p99", series(name, 3), "ms CPU", goal=Goal("<=", limit))
    report.baseline("ed25519 verify", ed25519, "ms CPU", wall("ed25519"))
    report.row("token verify (EdDSA)", series("token", 2), "ms CPU", baseline=ed25519,
               note=wall("token"))
    report.note("CPU: this thread's time (CLOCK_THREAD_CPUTIME_ID), which leaves out what the "
                "scheduler gave to other processes; the second baseline is for the token row")
    report.emit()

if __name__ == "__main__":
    main()
