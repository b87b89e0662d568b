"""The transcription worker's sandbox: a process that cannot create or write any file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from medclave.enclave.sandbox import landlock_abi

CHILD = r"""
import json, os, socket, sys
from medclave.enclave.sandbox import forbid_writes
state = forbid_writes()
results = {"active": state.active, "mechanism": state.mechanism, "reason": state.reason}
for name, path in (("tmp", sys.argv[1] + "/new.txt"), ("shm", "/dev/shm/medclave-test-" + str(os.getpid())),
                   ("existing", sys.argv[2])):
    try:
        with open(path, "a") as fh:
            fh.write("visit audio")
        results[name] = "written"
    except PermissionError:
        results[name] = "refused"
try:
    os.mkdir(sys.argv[1] + "/dir")
    results["mkdir"] = "made"
except PermissionError:
    results["mkdir"] = "refused"
try:
    os.unlink(sys.argv[2])
    results["unlink"] = "removed"
except PermissionError:
    results["unlink"] = "refused"
results["read"] = open(sys.argv[2]).read()
try:
    socket.create_connection(("127.0.0.1", 9), timeout=2)
    results["connect"] = "connected"
except PermissionError:
    results["connect"] = "refused"
except OSError:
    results["connect"] = "failed"
print(json.dumps(results))
"""


def _run(tmp_path: Path) -> dict[str, str]:
    existing = tmp_path / "existing.txt"
    existing.write_text("before")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(existing)],
                         capture_output=True, text=True, check=True, timeout=60, env=env)
    result: dict[str, str] = json.loads(out.stdout)
    return result


def test_the_sandbox_refuses_every_write_where_the_kernel_has_landlock(tmp_path: Path) -> None:
    result = _run(tmp_path)
    if landlock_abi() == 0:
        # No Landlock here: the sandbox says so rather than claim to be active.
        assert result["active"] is False and result["mechanism"] == "none" and result["reason"]
        return
    assert result["active"] is True and result["mechanism"] == "landlock"
    assert result["tmp"] == result["shm"] == result["existing"] == "refused"
    assert result["mkdir"] == result["unlink"] == "refused"
    assert result["read"] == "before"  # reading stays allowed (the model, the libraries)
    assert not list(tmp_path.glob("new.txt")) and (tmp_path / "existing.txt").read_text() == "before"
    if landlock_abi() >= 4:
        assert result["connect"] == "refused"  # and no network either


def test_the_kernel_here_has_landlock() -> None:
    # Recorded so that the attested runtime's claim on this machine is known: where this
    # fails the runtime states speech_sandbox "none" (tested above), which is not a defect.
    assert landlock_abi() >= 1, "this kernel has no Landlock: speech_sandbox will be 'none'"
