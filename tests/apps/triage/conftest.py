"""A triage enclave on sim (sealed store on disk under the test's folder) behind the proxy."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from medclave.apps.triage.app import TriageApp
from medclave.background import BackgroundServer
from medclave.client.proxy import create_proxy_app
from medclave.client.sdk import MedclaveClient
from medclave.client.session import EnclaveSession
from medclave.enclave.app import create_app
from medclave.enclave.boot import boot
from medclave.enclave.settings import EnclaveSettings
from tests.e2e.helpers import (
    E2E_STORE,
    ISSUER,
    MEASUREMENT,
    TENANT,
    Enclave,
    Idp,
    enclave_database,
    make_idp,
    sim_policy,
    write_commitment_key,
)


def write_root(path: Path) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex() + "\n")
    return path


def start_triage(folder: Path, idp: Idp, engine: Any, **overrides: Any) -> Enclave:
    if E2E_STORE == "postgresql":  # the sealed conversations and the log on PostgreSQL
        overrides = {"store": enclave_database(folder), **overrides}
    settings = EnclaveSettings(**{
        "data_dir": folder, "platform": "sim", "sim_measurement": MEASUREMENT,
        "audit_store": "sqlite", "commitment_key_file": write_commitment_key(folder / "t.key"),
        "auth_issuer": ISSUER, "auth_jwks_file": idp.jwks, "auth_tenants": (TENANT,),
        "auth_roles": ("clinician", "patient"), "triage": True,
        "sealing_root_file": write_root(folder / "sealing.key"), **overrides})
    booted = boot(settings, engine_factory=lambda path, s: engine,
                  apps=(TriageApp.from_context,))
    server = BackgroundServer(create_app(booted.service, settings)).start()
    return Enclave(booted, server, engine, settings)


def sdk(enclave: Enclave, token: str | Callable[[], str]) -> MedclaveClient:
    return MedclaveClient(enclave.url, policy=sim_policy(), api_key=token,
                          sim_roots=[enclave.sim_root])


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("triage-idp"))


def proxy_for(enclave: Enclave, **kwargs: Any) -> tuple[BackgroundServer, EnclaveSession]:
    session = EnclaveSession(enclave.url, sim_policy(), sim_roots=frozenset({enclave.sim_root}))
    server = BackgroundServer(create_proxy_app(session, **kwargs), name="triage-proxy").start()
    return server, session


class OperatorStore:
    """What the operator can do to an enclave's sealed-conversations store, on SQLite (the
    file) or PostgreSQL (the database, triggers disabled as the owner can): edit rows (SQLite's
    spelling: tables ``conversations`` and ``turns``, ``?`` parameters), copy and restore."""

    def __init__(self, enclave: Enclave) -> None:
        self.url = enclave.settings.store if enclave.settings.store.startswith("postgres") else None
        self.file = Path(enclave.settings.data_dir) / "sealed" / "conversations.sqlite3"

    def execute(self, sql: str, *args: object) -> None:
        if self.url is None:
            with sqlite3.connect(self.file) as raw:
                raw.execute(sql, args)
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("ALTER TABLE sealed_turns DISABLE TRIGGER USER")
            conn.execute(re.sub(r"\b(conversations|turns)\b", r"sealed_\1", sql)
                         .replace("?", "%s"), args)

    def snapshot(self) -> Any:
        if self.url is None:
            copy = sqlite3.connect(":memory:")
            with sqlite3.connect(self.file) as live:
                live.backup(copy)
            return copy
        with psycopg.connect(self.url) as conn:
            return (conn.execute("SELECT * FROM sealed_conversations").fetchall(),
                    conn.execute("SELECT * FROM sealed_turns").fetchall())

    def restore(self, copy: Any) -> None:
        if self.url is None:
            with sqlite3.connect(self.file) as live:
                copy.backup(live)
            return
        conversations, turns = copy
        with psycopg.connect(self.url) as conn, conn.cursor() as cur:  # one transaction
            cur.execute("DELETE FROM sealed_conversations")  # the turns go with them
            cur.executemany("INSERT INTO sealed_conversations VALUES (%s, %s, %s, %s, %s, %s)",
                            conversations)
            cur.executemany("INSERT INTO sealed_turns VALUES (%s, %s, %s, %s)", turns)
