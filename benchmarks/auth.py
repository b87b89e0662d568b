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

Iterations: MEDCLAVE_BENCH_AUTH_N (default 2000 for single calls; a tenth for filters).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import cedarpy

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
from medclave.auth.jose import b64url_decode, jwk_thumbprint

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _latencies(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    for _ in range(min(50, n)):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


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
                doc = Document(
                    id=f"{t}-p{p}-d{d}", tenant=t, patient=f"{t}-p{p}", category="11506-3"
                )
                entities.append(doc)
                docs.append(doc)
    return entities, docs


def main() -> None:
    n = int(os.environ.get("MEDCLAVE_BENCH_AUTH_N", "2000"))
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
    base50, base99 = _latencies(lambda: cedarpy.is_authorized(request, empty_ps, empty_entities), n)

    kept = authorizer.filter_documents(identity, ids, entities=store, now=NOW)
    rows: list[tuple[str, float, float, str]] = [
        ("cedar, empty policy set", base50, base99, ""),
        (
            "decide",
            *_latencies(
                lambda: authorizer.decide(identity, "retrieve", ids[-1], entities=store, now=NOW), n
            ),
            "p99 <= 0.5 ms",
        ),
        (
            "filter 50 (ids)",
            *_latencies(
                lambda: authorizer.filter_documents(identity, ids, entities=store, now=NOW), n // 10
            ),
            "p99 <= 5 ms",
        ),
        (
            "filter 50 (entities)",
            *_latencies(
                lambda: authorizer.filter_documents(
                    identity, candidates, entities=empty_store, now=NOW
                ),
                n // 10,
            ),
            "p99 <= 5 ms",
        ),
    ]

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    issuer = TokenIssuer("bench", SigningKey(private_key=key, kid=jwk_thumbprint(key.public_key())))
    verifier = TokenVerifier(
        [IssuerConfig(issuer="bench", keys=StaticJwks.from_document(issuer.jwks()))],
        TokenOptions(audiences=frozenset({"medclave"}), single_use=False),
    )
    token = issuer.issue(sub="u", tenant="st-mary", roles=["clinician"], now=NOW)
    head, payload, sig = token.split(".")
    data, raw_sig, pub = f"{head}.{payload}".encode(), b64url_decode(sig), key.public_key()
    sig50, sig99 = _latencies(lambda: pub.verify(raw_sig, data), n)
    tok50, tok99 = _latencies(lambda: verifier.verify(token, now=NOW), n)

    print(f"directory: {len(store)} entities; {len(kept)} of {len(ids)} candidates allowed")
    print(f"{'operation':<26}{'p50 ms':>10}{'p99 ms':>10}{'x baseline':>12}  goal")
    for name, p50, p99, goal in rows:
        ratio = p50 / base50 if base50 else float("nan")
        verdict = ""
        if goal:
            limit = float(goal.split("<=")[1].split()[0])
            verdict = f"{goal} ({'met' if p99 <= limit else 'MISSED'})"
        print(f"{name:<26}{p50:>10.3f}{p99:>10.3f}{ratio:>12.1f}  {verdict}")
    print(f"{'ed25519 verify (baseline)':<26}{sig50:>10.3f}{sig99:>10.3f}{1.0:>12.1f}")
    print(f"{'token verify (EdDSA)':<26}{tok50:>10.3f}{tok99:>10.3f}{tok50 / sig50:>12.1f}")


if __name__ == "__main__":
    main()
