"""Killing the broker during a rotation leaves the old key or the new one usable, never neither.

A broker subprocess rotates one resource as fast as it can (KeyBroker over SQLite, the code path
of the owner API), announcing each new key before and after its rotation; we SIGKILL it at a
random moment, reopen its store, and check that the current version opens under the KEK and is
either the last key announced as committed or the one being rotated in, and that every kept
version still opens.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medclave.kbs.keywrap import FileKek
from medclave.kbs.names import ResourceName
from medclave.kbs.owner_api import wrap_aad
from medclave.kbs.sqlite_store import SqliteKbsStore

RESOURCE = "kbs:///vendor/model-key/llama"
ROTATOR = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from medclave.kbs.keywrap import FileKek
    from medclave.kbs.service import KeyBroker
    from medclave.kbs.sqlite_store import SqliteKbsStore
    from medclave.errors import KbsError

    data = Path(sys.argv[1])
    from medclave.kbs.signing import BrokerSigner
    broker = KeyBroker(SqliteKbsStore(data / "kbs.sqlite3"), FileKek.load(data / "kek.key"),
                       signer=BrokerSigner.generate())
    resource = sys.argv[2]
    try:
        key = os.urandom(32)
        print("pending", key.hex(), flush=True)
        broker.create_resource("vendor", resource, key, client_id="rotator")
        print("committed", key.hex(), flush=True)
    except KbsError:
        pass  # created in an earlier round
    print("ready", flush=True)
    while True:
        key = os.urandom(32)
        print("pending", key.hex(), flush=True)
        broker.rotate_resource("vendor", resource, key, client_id="rotator")
        print("committed", key.hex(), flush=True)
""")


@pytest.mark.slow
def test_sigkill_mid_rotation_leaves_old_or_new_key(tmp_path: Path) -> None:
    data = tmp_path / "kbs"
    data.mkdir(mode=0o700)
    kek = FileKek.create(data / "kek.key")
    script = tmp_path / "rotator.py"
    script.write_text(ROTATOR)
    rng = random.Random(20250701)
    name = ResourceName.parse(RESOURCE)
    last_committed: bytes | None = None
    kills_mid_rotation = 0
    for _round in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(data), RESOURCE],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        lines: list[str] = []
        while True:  # until it runs its rotation loop
            line = proc.stdout.readline().decode()
            assert line, "rotator died before it was ready"
            lines.append(line)
            if line.startswith("ready"):
                break
        time.sleep(rng.uniform(0.005, 0.15))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read().decode()
        proc.wait()
        proc.stdout.close()
        lines += rest.splitlines()
        pending: bytes | None = None
        for line in lines:
            word, _, value = line.strip().partition(" ")
            if word == "pending":
                pending = bytes.fromhex(value)
            elif word == "committed" and len(value) == 64:  # a line cut by the kill is ignored
                last_committed, pending = bytes.fromhex(value), None
        kills_mid_rotation += pending is not None

        store = SqliteKbsStore(data / "kbs.sqlite3")
        try:
            info = store.resource_info(name)
            assert info is not None
            current = store.secret_version(name)
            key = kek.unwrap(current.wrapped, wrap_aad(name, current.version))
            assert key in {last_committed, pending}, "the current key is neither old nor new"
            last_committed = key
            for version in info.versions:  # every kept version still opens
                kept = store.secret_version(name, version)
                assert len(kek.unwrap(kept.wrapped, wrap_aad(name, version))) == 32
            assert info.versions == tuple(range(1, info.current + 1))
        finally:
            store.close()
    # The test means something only if kills did land between "pending" and "committed".
    assert kills_mid_rotation >= 1
    assert os.path.exists(data / "kbs.sqlite3")
