"""Packaging (issue 16): each party installs what it runs. The client path (SDK, proxy,
verifier, CLI) imports without llama.cpp; the extras are declared as the issue names them, with
llama.cpp in the enclave's only; the wheel carries every data file the code reads (Cedar
policies and their schema, py.typed)."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Run in a fresh interpreter with llama_cpp made unimportable (as on a client-only install).
BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError("llama_cpp is not installed (client install)")
        return None
sys.meta_path.insert(0, Block())
"""

CLIENT_PATH = BLOCKED + """
import medclave.client.sdk, medclave.client.proxy, medclave.client.verify
import medclave.client.session, medclave.attestation.verifier, medclave.cli.main
from typer.testing import CliRunner
from medclave.cli.main import app
for args in (["proxy", "--help"], ["attest", "verify", "--help"], ["config", "show", "proxy",
             "--help"], ["audit", "verify", "--help"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
assert "llama_cpp" not in sys.modules
print("ok")
"""

ENGINE_PATH = BLOCKED + """
from medclave.enclave.engines.llamacpp import LlamaCppEngine
LlamaCppEngine("/nonexistent.gguf")
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_the_client_path_imports_without_llama_cpp() -> None:
    got = _run(CLIENT_PATH)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip().endswith("ok")


def test_the_block_is_real_the_engine_needs_llama_cpp() -> None:
    got = _run(ENGINE_PATH)
    assert got.returncode != 0
    assert "llama_cpp is not installed" in got.stderr


def _names(requirements: list[str]) -> set[str]:
    return {r.split("==")[0].split("[")[0].lower() for r in requirements}


def test_each_party_has_its_extra_and_only_the_enclave_builds_llama_cpp() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"client", "enclave", "broker", "audit"} <= set(extras)
    base = _names(PYPROJECT["project"]["dependencies"])
    assert "llama-cpp-python" not in base
    assert "llama-cpp-python" in _names(extras["enclave"])
    for party in ("client", "broker", "audit"):
        assert "llama-cpp-python" not in _names(extras[party])
    assert "openai" in _names(extras["client"])  # the SDK returns openai's types
    makefile = (ROOT / "Makefile").read_text()
    installed = re.search(r"install -e '\.\[([a-z,]+)\]'", makefile)
    assert installed is not None
    assert set(extras) <= set(installed.group(1).split(","))  # make install: every extra


def test_the_wheel_carries_every_data_file_the_code_reads() -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["medclave"]
    package = ROOT / "src" / "medclave"
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert any(d.endswith(".cedar") for d in data) and "auth/policies/schema.json" in data
    for file in data:
        # setuptools' "**/" also matches files at the package root.
        assert any(fnmatch.fnmatch(file, pat) or fnmatch.fnmatch(file, pat.removeprefix("**/"))
                   for pat in patterns), f"{file} would be left out of the wheel"
