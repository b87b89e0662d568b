"""PostgreSQL-only properties of the records store: two replicas' ingests never leave a store
that the next boot refuses, and a newer schema is refused untouched. (The row format and the
tamper checks run on SQLite and PostgreSQL in test_store.py.)"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from medclave.errors import MedclaveError, RecordsError
from medclave.records.embed import Embedder
from medclave.records.pgstore import MIGRATIONS, PostgresRecordStore
from tests.records.conftest import TENANT, make_service


def _part(bundle: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Part of one patient's bundle (its first entries: the patient and what they reference)."""
    part = dict(bundle)
    part["entry"] = bundle["entry"][start:stop]
    return part


def test_a_replica_that_has_not_read_the_latest_manifest_is_refused(
        pg_url: str, embedder: Embedder, synthea: list[dict[str, Any]]) -> None:
    a = make_service(embedder, PostgresRecordStore(pg_url))
    b = make_service(embedder, PostgresRecordStore(pg_url))
    a.rebuild()
    b.rebuild()
    assert a.ingest(TENANT, _part(synthea[0], 0, 30))["resources"] > 0
    with pytest.raises(RecordsError) as err:  # b's view of the tenant is stale
        b.ingest(TENANT, _part(synthea[1], 0, 30))
    assert err.value.code == "records.store_conflict"
    loaded = make_service(embedder, PostgresRecordStore(pg_url)).rebuild()
    assert loaded > 0  # a's rows, and the manifest over them: nothing of b's was written
    b.close()
    b = make_service(embedder, PostgresRecordStore(pg_url))
    assert b.rebuild() == loaded  # restarted, b has read the manifest: it may ingest
    b.ingest(TENANT, _part(synthea[1], 0, 30))
    with pytest.raises(RecordsError):  # and now a is the stale one
        a.ingest(TENANT, _part(synthea[2], 0, 30))
    again = make_service(embedder, PostgresRecordStore(pg_url))
    assert again.rebuild() > loaded  # the store boots: every manifest covered every row
    for service in (a, b, again):
        service.close()


def test_a_newer_schema_is_refused_untouched(pg_url: str) -> None:
    PostgresRecordStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO medclave_schema VALUES ('records', %s, 'later', 'future')",
                     (len(MIGRATIONS) + 1,))
    with pytest.raises(MedclaveError) as err:
        PostgresRecordStore(pg_url)
    assert err.value.code == "service.schema_newer"
