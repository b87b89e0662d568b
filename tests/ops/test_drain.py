"""SIGTERM on a real enclave process while a request is in flight: readiness fails first, the
request still completes, its audit entry is on disk, the process closes its service and exits 0,
and nothing is accepted after (issue 16, graceful shutdown)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from medclave.audit.store import SqliteLogStore
from medclave.client.session import EnclaveSession, InnerResponse
from medclave.enclave.model import DEFAULT_MODEL_SHA256
from medclave.protocol import inference as proto
from tests.e2e.helpers import sim_policy
from tests.ops.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _start(data: Path, port: int, metrics_port: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
               MEDCLAVE_TEST_ENGINE_SECONDS="2.0", MEDCLAVE_TEST_DRAIN="1.0")
    return subprocess.Popen([sys.executable, "-m", "tests.ops.serve_enclave", str(data),
                             str(port), str(metrics_port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_drains_in_flight_requests_and_records_them(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    proc = _start(tmp_path, port, metrics_port)
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None
        booted = json.loads(proc.stdout.readline())
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200 or None)
        assert httpx.get(url + "/healthz").json() == {"status": "alive"}
        session = EnclaveSession(url, sim_policy(measurement=_measurement(url),
                                                 model_digest=DEFAULT_MODEL_SHA256),
                                 sim_roots=frozenset({booted["sim_root"]}))
        answers: list[InnerResponse] = []
        body = json.dumps({"messages": [{"role": "user", "content": "hello"}]}).encode()
        worker = threading.Thread(target=lambda: answers.append(
            session.request("POST", proto.CHAT_PATH, body=body)))
        worker.start()
        wait_for(lambda: (tmp_path / "engine-busy").exists() or None, timeout=30)

        proc.send_signal(signal.SIGTERM)
        # Draining: still answering, but not ready, and saying why.
        ready = wait_for(lambda: (r := httpx.get(url + "/readyz")).status_code == 503 and r,
                         timeout=5)
        assert ready.json()["checks"]["draining"] == "failing"
        assert ready.json()["status"] == "not_ready"

        worker.join(timeout=30)
        assert answers and answers[0].status == 200  # the in-flight request finished
        assert proc.wait(timeout=30) == 0  # exited by itself, not killed by the signal
        out = proc.stdout.read()
        assert '{"closed": true}' in out  # the service's finally ran (audit log closed)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz")
        logs = [json.loads(line) for line in proc.stderr.read().splitlines()
                if line.startswith("{")]
        assert any("draining" in entry["message"] for entry in logs)
        session.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The answer's audit entry is in the log on disk.
    (db,) = (tmp_path / "audit").glob("*.sqlite3")
    store = SqliteLogStore(db, readonly=True)
    try:
        assert store.size() == 1
    finally:
        store.close()


def _measurement(url: str) -> str:
    """The sim measurement the process reports (the test pins what it is told by the code
    measurement command, not by the process)."""
    from medclave.attestation.sim import code_measurement

    return code_measurement().hex()
