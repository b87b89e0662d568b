"""The wheel works outside the repository (issue 16): built from the source with the pinned build
backend, installed into an empty folder, and imported from a working directory with no checkout
in sight, it carries every data file the code reads (Cedar policies, the triage lexicon, crisis
responses and safe-messaging prompt, the pages' static files) and its CLI runs.

No package index is contacted: the build runs without isolation against the dev extras'
setuptools, and the install takes the one wheel with ``--no-deps`` (dependencies come from the
environment, as they would from a user's own install)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

_CHECK = """
import json, sys
from importlib import resources
import medclave
from medclave.apps.triage.crisis import default_responses
from medclave.apps.triage.prompt import default_prompt
from medclave.apps.triage.screening import default_lexicon
from medclave.auth.authorizer import load_policies

here = medclave.__file__
policies = load_policies()
default_lexicon(); default_responses()
static = resources.files("medclave.client").joinpath("static")
pages = ["triage.html", "triage.js", "triage.css", "scribe/index.html", "scribe/scribe.js"]
missing = [p for p in pages if not static.joinpath(p).is_file()]
print(json.dumps({"file": here, "missing": missing, "prompt": len(default_prompt()) > 0}))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_carries_its_data_and_runs_outside_the_repository(tmp_path: Path) -> None:
    wheels, target, cwd = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(wheels), str(ROOT)], check=True, env=env,
                   capture_output=True, timeout=540)
    (wheel,) = wheels.glob("medclave-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), str(wheel)], check=True, env=env,
                   capture_output=True, timeout=300)
    run_env = {**env, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", _CHECK], cwd=cwd, env=run_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(target)  # the wheel's copy, not the checkout
    assert found["missing"] == [] and found["prompt"]
    cli = subprocess.run([sys.executable, "-m", "medclave.cli.main", "--help"], cwd=cwd,
                         env=run_env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    for group in ("attest", "enclave", "proxy", "records", "fl", "config", "monitor"):
        assert group in cli.stdout
