"""The decision log's row in the SQL stores (:mod:`medclave.kbs.sqlite_store`,
:mod:`medclave.kbs.postgres_store`): one column order and one mapping to and from
:class:`~medclave.kbs.store.Decision`, so the two stores cannot drift apart.

Only the encodings differ by dialect, and each store passes its own: the time (ISO-8601 text
in SQLite, ``timestamptz`` in PostgreSQL) and the checks (a JSON array as text, ``text[]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from medclave.kbs.store import AggregateKey, Decision

# What a read selects, in the order decision_from_row reads.
DECISION_COLUMNS = ("at, action, resource, outcome, client, code, version, detail, "
                    "policy_digest, evidence_sha256, checks, actor, count")
# What a write inserts, in the order decision_values gives.
DECISION_INSERT_COLUMNS = ("at, action, resource, owner, outcome, client, code, version, detail, "
                           "policy_digest, evidence_sha256, checks, actor, count, bucket")


def decision_values(d: Decision, key: AggregateKey | None, *, at: object,
                    checks: object) -> tuple[object, ...]:
    """The row for ``d`` (``key``: its aggregate key, None for a permanent row), with the time
    and the checks already in the dialect's encoding."""
    return (at, d.action, d.resource,
            d.owner or "",  # the column's "no owner": the resource is not a name
            d.outcome, d.client, d.code, d.version, d.detail, d.policy_digest,
            d.evidence_sha256, checks, d.actor, d.count, None if key is None else key[0])


def decision_from_row(r: Sequence[Any], *, at: datetime, checks: Iterable[str]) -> Decision:
    """A :data:`DECISION_COLUMNS` row back, the time and the checks decoded by the dialect."""
    return Decision(
        at=at,
        action=str(r[1]),
        resource=str(r[2]),
        outcome="allowed" if r[3] == "allowed" else "refused",
        client=str(r[4]),
        code=None if r[5] is None else str(r[5]),
        version=None if r[6] is None else int(r[6]),
        detail=str(r[7]),
        policy_digest=str(r[8]),
        evidence_sha256=str(r[9]),
        checks=tuple(checks),
        actor=str(r[11]),
        count=int(r[12]),
    )
