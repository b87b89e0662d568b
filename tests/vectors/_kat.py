"""The known-answer generator's registry, shared helpers and shared fixed inputs."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GENERATOR = "tests/vectors/generate.py"
Vector = dict[str, Any]
VECTORS: dict[str, Callable[[], Vector]] = {}


def vector(name: str) -> Callable[[Callable[[], Vector]], Callable[[], Vector]]:
    def register(fn: Callable[[], Vector]) -> Callable[[], Vector]:
        VECTORS[name] = fn
        return fn
    return register


def agree(what: str, spec: Any, library: Any) -> None:
    """Stop unless the library produces what the written format says."""
    if spec != library:
        raise SystemExit(f"{what}: the library disagrees with the format definition\n"
                         f"  spec:    {spec!r}\n  library: {library!r}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# Fixed inputs (drawn once from os.urandom, then frozen here).
NONCE_32 = bytes.fromhex("a5759937f319f0c29c2826b5430439b4465121468ea704a093aed6144a414a98")
NONCE_64 = bytes.fromhex("33db5ead6b0319d7927dc7b0cf1e9086ebe523c209ed1e13c5f59a7f53bed3dc"
                         "1ac62269323a0e5995f58d51dc833a89cefec73bee2ccfdb3ba037ef3ac4c6b8")
MODEL_DIGEST = "575ce26fdb8ebfe2a656d56a56a6252cc7f55e0b93a6c82fa5daa8d29fe90f84"
POLICY_DIGEST = "383ce306d834c129bbf4160044cd4b9c776e1c4ddbc3b54e51bd17c48f77d73b"
EVIDENCE_DIGEST = "290339a85e6092d40029aa3cd0ee7fb69ff7573c57835b95db4b6eb91ee3e68b"
ENGINE_BUILD = "llama.cpp-b4500-cpu"
