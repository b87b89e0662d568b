"""The real broker on PostgreSQL, end to end: two `medclave kbs serve` processes on 127.0.0.1
sharing one database (``--store postgresql://...``) and one data folder (KEK, signing key).

An owner provisions through one replica and an enclave is released to by the other; a nonce
issued by one replica is spent at the other and its replay at the first is refused; a revoked
measurement is refused by both. Nothing of the store is on disk: the SQLite file never appears.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from medclave.attestation import sim
from medclave.errors import KbsError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.signing import TrustedBrokers
from tests.kbs.helpers import (
    MEASUREMENT,
    RESOURCE,
    challenge,
    ephemeral_runtime,
    error_code,
    post_release,
    sim_attester,
    sim_policy,
)
from tests.kbs.test_broker_identity import _free_port, medclave

pytestmark = pytest.mark.slow


def _serve(data: Path, store: str, authority: sim.SimAuthority) -> tuple[subprocess.Popen[bytes],
                                                                         str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medclave.cli.main", "kbs", "serve", "--data", str(data),
         "--host", "127.0.0.1", "--port", str(port), "--store", store,
         "--sim-root", authority.root_fingerprint],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "exited")
        if time.monotonic() > deadline:
            proc.terminate()
            raise AssertionError("broker did not start")
        time.sleep(0.1)


@pytest.fixture
def brokers(pg_url: str, tmp_path: Path, authority: sim.SimAuthority
            ) -> Iterator[tuple[str, str, str, TrustedBrokers]]:
    """(url A, url B, vendor token, the brokers' key as an enclave pins it)."""
    data = tmp_path / "kbs"
    added = medclave("kbs", "owner", "add", "vendor", "--data", str(data), "--store", pg_url)
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first, url_a = _serve(data, pg_url, authority)  # makes the KEK and signing key
        procs.append(first)
        second, url_b = _serve(data, pg_url, authority)
        procs.append(second)
        shown = json.loads(medclave("kbs", "key", "show", "--data", str(data)).stdout)
        yield url_a, url_b, token, TrustedBrokers.of([shown["public_key"]])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)
    assert not (data / "kbs.sqlite3").exists()


@pytest.fixture
def authority(tmp_path: Path) -> sim.SimAuthority:
    return sim.SimAuthority.load_or_create(tmp_path / "sim")


def test_two_brokers_on_one_database(brokers: tuple[str, str, str, TrustedBrokers],
                                     authority: sim.SimAuthority, pg_url: str) -> None:
    url_a, url_b, token, trusted = brokers
    secret = os.urandom(32)
    with OwnerClient(url_a, token) as owner:  # provisioned through replica A
        owner.put(RESOURCE, secret)
        owner.set_policy(RESOURCE, sim_policy())
    with KbsClient(url_b, sim_attester(authority), trusted=trusted) as enclave:  # released by B
        assert enclave.fetch(RESOURCE) == secret

    # A nonce from A, spent at B; its replay at A is refused with the stable code.
    nonce = challenge(url_a)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    assert post_release(url_b, RESOURCE, nonce, bundle).status_code == 200
    replayed = post_release(url_a, RESOURCE, nonce, bundle)
    assert replayed.status_code == 400
    assert error_code(replayed) == "kbs.nonce_replayed"

    # Revoked through B: neither replica releases to that build any more.
    with OwnerClient(url_b, token) as owner:
        owner.revoke("measurement", MEASUREMENT.hex(), "CVE-2026-0001")
    for url in (url_a, url_b):
        with KbsClient(url, sim_attester(authority), trusted=trusted) as enclave, \
                pytest.raises(KbsError) as err:
            enclave.fetch(RESOURCE)
        assert err.value.code == "kbs.revoked"

    # Both replicas wrote one decision log, in the database.
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT action, outcome, code FROM kbs_decisions "
                            "WHERE action = 'release' ORDER BY id").fetchall()
    assert rows == [("release", "allowed", None), ("release", "allowed", None),
                    ("release", "refused", "kbs.nonce_replayed"),
                    ("release", "refused", "kbs.revoked"), ("release", "refused", "kbs.revoked")]


def test_a_bad_store_value_stops_the_broker_at_start(tmp_path: Path) -> None:
    refused = medclave("kbs", "serve", "--data", str(tmp_path / "kbs"), "--port", "0",
                       "--store", "mysql://u@127.0.0.1/kbs")
    assert refused.returncode == 2
    assert "postgresql:// URL" in refused.stdout + refused.stderr
