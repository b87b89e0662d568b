"""The enclave's one ``store`` setting: SQLite files (default), memory, or PostgreSQL for the
audit log, the sealed conversations and the records; per-store "memory" still wins; the URL's
password never shows; a remote host is refused unless allowed."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from medclave.audit.note import ALG_ED25519, NoteVerifier
from medclave.audit.pgstore import PostgresLogStore
from medclave.audit.receipt import verify_receipt
from medclave.audit.store import MemoryLogStore
from medclave.audit.verify import verify_log
from medclave.crypto import bhttp
from medclave.crypto.ohttp import encapsulate_request
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import MedclaveError
from medclave.ops.config import effective
from medclave.protocol import inference as proto
from tests.e2e.helpers import FakeEngine, Idp, audit_log, make_idp, start_enclave


def test_store_is_sqlite_memory_or_a_postgresql_url() -> None:
    assert EnclaveSettings().store == "sqlite"
    for bad in ("mysql://db/x", "/var/lib/medclave", "postgresq://x"):
        with pytest.raises(ValidationError):
            EnclaveSettings(store=bad)
    assert EnclaveSettings(store=None).store == "sqlite"  # unset in an older configuration
    url = "postgresql://medclave:s3cret@127.0.0.1:5432/medclave"
    settings = EnclaveSettings(store=url, records_store="memory")
    shown = json.dumps(effective(settings))  # what `medclave config show` prints
    assert "s3cret" not in shown and "medclave:***@127.0.0.1" in shown
    assert settings.store == url  # the service itself uses the real one
    assert settings.backend(settings.audit_store) == url
    assert settings.backend(settings.records_store) == "memory"
    assert EnclaveSettings(store="memory").backend("sqlite") == "memory"


def test_a_remote_database_is_refused_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(MedclaveError) as err:
        start_enclave(tmp_path / "e", None, engine=FakeEngine(), audit_store="sqlite",
                      store="postgresql://u@db.example.org/medclave")
    assert err.value.code == "config.invalid"


def _call(service: object, token: str) -> bhttp.Response:
    inner = proto.encode_inner_request(
        "POST", proto.CHAT_PATH, body=json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 8}).encode(),
        authorization=f"Bearer {token}")
    wire, context = encapsulate_request(service.keys.config, inner)  # type: ignore[attr-defined]
    outer = service.handle(wire, proto.OHTTP_REQUEST)  # type: ignore[attr-defined]
    return bhttp.decode_response(context.decapsulate_response(outer.body))


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("idp"))


def test_the_audit_log_rests_in_postgresql(tmp_path: Path, idp: Idp, pg_url: str) -> None:
    enclave = start_enclave(tmp_path / "enclave", idp, engine=FakeEngine(), audit_store="sqlite",
                            store=pg_url)
    try:
        log = audit_log(enclave)
        assert isinstance(log.store, PostgresLogStore)
        answer = _call(enclave.booted.service, idp.token())
        assert answer.status == 200
        receipt = proto.decode_receipt_header(answer.header(proto.RECEIPT_HEADER) or "")
        runtime = proto.EnclaveRuntime.from_runtime(enclave.booted.service.runtime())
        key = NoteVerifier(runtime.audit_origin, runtime.audit_key(), ALG_ED25519)
        verified = verify_receipt(receipt, key)
        # What an auditor opens: the database, read-only, by the log's name.
        reader = PostgresLogStore(pg_url, log=log.store.log, readonly=True)  # type: ignore[attr-defined]
        report = verify_log(reader, key)
        reader.close()
        assert report.ok and report.size == verified.index + 1
    finally:
        enclave.stop()
    assert not (tmp_path / "enclave" / "audit").exists()  # nothing went to SQLite files
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_entries").fetchone() == (1,)


def test_memory_for_one_store_wins_over_the_database(tmp_path: Path, pg_url: str) -> None:
    enclave = start_enclave(tmp_path / "enclave", None, engine=FakeEngine(), audit_store="memory",
                            store=pg_url)
    try:
        assert isinstance(audit_log(enclave).store, MemoryLogStore)
    finally:
        enclave.stop()
    with psycopg.connect(pg_url) as conn:  # the audit tables were never made
        assert conn.execute("SELECT to_regclass('audit_entries')").fetchone() == (None,)

