"""What every ``medclave`` command prints and how it exits: one error printer, one JSON error
shape, one meaning for each exit status.

Exit status, in every command group:

- **0**: done, verified, allowed.
- **1**: refused: the input could be used and the answer is no (evidence or a signature that
  does not verify, a policy that says no, a broker that refuses).
- **2**: unusable input: nothing could be decided (a file missing, unreadable or malformed, a
  bad flag, a bad configuration). Every ``input.*`` and ``config.*`` code, and the codes in
  :data:`UNUSABLE` (evidence or policies that cannot be read, keys that are not keys). Usage
  errors caught by Typer (a missing or bad option) exit 2 too.

An error as JSON (``--json``, or commands whose output is always JSON), on stdout::

    {"ok": false, "error": {"code": "input.missing", "message": "..."}}

(``error.where`` is added when the error says where, e.g. the log index of a bad entry). As
text, ``error: CODE: MESSAGE`` on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer

from medclave.errors import CATALOGUE, MedclaveError

T = TypeVar("T")

UNUSABLE_FAMILIES = ("input.", "config.")
# Codes outside those families that say "this input cannot be used", not "this is refused".
UNUSABLE = frozenset({
    "attestation.malformed", "attestation.unsupported_version", "attestation.unknown_platform",
    "attestation.certificate_missing", "attestation.reserved_nonzero",
    "policy.invalid", "policy.empty",
    "model.manifest_invalid",
    "crypto.bad_key",
    "audit.index_out_of_range", "audit.receipt_invalid",
    "enclave.not_ready", "enclave.engine_failed",
})


def exit_code(exc: MedclaveError) -> int:
    """2 when the input is unusable, 1 when it is refused."""
    return 2 if exc.code.startswith(UNUSABLE_FAMILIES) or exc.code in UNUSABLE else 1


def error_object(exc: MedclaveError) -> dict[str, Any]:
    """The one JSON shape of an error."""
    error: dict[str, Any] = exc.to_dict()
    if "where" in exc.context:
        error["where"] = exc.context["where"]
    return {"ok": False, "error": error}


def emit(value: Any, out: Path | None = None) -> None:
    """One JSON document on stdout (or in ``out``)."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)


def fail(exc: MedclaveError, *, as_json: bool = True) -> typer.Exit:
    """Print ``exc`` (JSON on stdout, or a line on stderr) and return the exit to raise:
    ``raise fail(exc) from None``."""
    if as_json:
        emit(error_object(exc))
    else:
        typer.echo(f"error: {exc.code}: {exc.detail}", err=True)
    return typer.Exit(exit_code(exc))


def run(action: Callable[[], T], *, as_json: bool = True) -> T:
    """``action()``, or exit through :func:`fail` on a refusal."""
    try:
        return action()
    except MedclaveError as exc:
        raise fail(exc, as_json=as_json) from None


@contextmanager
def refusals(*, as_json: bool = True) -> Iterator[None]:
    """A refusal inside the block ends the command through :func:`fail`."""
    try:
        yield
    except MedclaveError as exc:
        raise fail(exc, as_json=as_json) from None


def refused_answer(body: Any) -> typer.Exit:
    """A service's error answer (``{"error": {"code", "message"}}``) printed in the one JSON
    shape; the exit to raise follows its code (1 when the answer has none we know)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": "client.upstream_failed", "message": "the answer carries no error"}
    emit({"ok": False, "error": error})
    code = error.get("code")
    if isinstance(code, str) and code in CATALOGUE:
        return typer.Exit(exit_code(MedclaveError(code)))
    return typer.Exit(1)
