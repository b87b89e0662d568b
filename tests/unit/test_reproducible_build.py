"""The wheel build is reproducible: two builds of the same source, from two different folders,
with the same SOURCE_DATE_EPOCH, give byte-identical wheels (release transparency publishes
the wheel's digest in its provenance, so anyone rebuilding must get the same one).

Builds with ``pip wheel`` against the build backend pinned in the dev extras (setuptools, wheel),
without build isolation and without the package index, so the test contacts nothing; the builds
run side by side."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
EPOCH = "1700000000"


def _copy(to: Path) -> Path:
    to.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, to / name)
    shutil.copytree(ROOT / "src", to / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return to


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_builds_give_one_digest(tmp_path: Path) -> None:
    base = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    builds = []
    # The third build, another epoch, is the negative twin: the digest does depend on the
    # timestamps, so equal digests above are reproducibility, not a check that cannot fail.
    for i, epoch in enumerate((EPOCH, EPOCH, "1700086400")):
        source, out = _copy(tmp_path / f"src{i}"), tmp_path / f"wheel{i}"
        env = {**base, "SOURCE_DATE_EPOCH": epoch}
        builds.append((out, subprocess.Popen(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", "-w", str(out),
             str(source)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    digests = []
    for out, proc in builds:
        output, _ = proc.communicate(timeout=540)
        assert proc.returncode == 0, output.decode(errors="replace")[-2000:]
        (wheel,) = out.glob("medclave-*.whl")
        digests.append(hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert digests[2] != digests[0]
