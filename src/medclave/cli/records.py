"""``medclave records``: ingest FHIR files and search them, through the hospital's proxy.

Wiring only: each command is one HTTP request to the local proxy (``--proxy``, default
``MEDCLAVE_PROXY_URL`` or http://127.0.0.1:8080), which attests the enclave and encapsulates the
request like any other; the records are never sent anywhere in the clear beyond this machine's
loopback. The token is ``--token`` or ``MEDCLAVE_TOKEN`` (a proxy that holds the credentials
itself needs none). Each command prints JSON on stdout. Exit 0: done; 1: refused by the
enclave or proxy; 2: unusable input (a missing or non-JSON file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from medclave.cli.output import fail, refused_answer
from medclave.errors import ClientError, InputError

app = typer.Typer(help="FHIR records: ingest and search, through the proxy.",
                  no_args_is_help=True)

MAX_FILE_BYTES = 1024 * 1024  # the encapsulated request's body limit

ProxyOpt = Annotated[str, typer.Option("--proxy", envvar="MEDCLAVE_PROXY_URL",
                                       help="The hospital's Medclave proxy.")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="MEDCLAVE_TOKEN",
                                              help="Bearer token (else the proxy's own).")]


def _post(proxy: str, path: str, body: bytes, token: str | None) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    try:
        answer = httpx.post(proxy.rstrip("/") + path, content=body, headers=headers,
                            timeout=600.0)
    except httpx.HTTPError as exc:
        raise fail(ClientError("client.upstream_failed", type(exc).__name__)) from None
    try:
        return answer.status_code, answer.json()
    except ValueError:
        return answer.status_code, {"error": {"code": "client.upstream_failed",
                                              "message": "not JSON"}}


@app.command("ingest")
def ingest_cmd(files: Annotated[list[Path], typer.Argument(help="FHIR Bundle or resource JSON")],
               proxy: ProxyOpt = "http://127.0.0.1:8080", token: TokenOpt = None) -> None:
    """Ingest each file (one request per file: all of a file or nothing of it)."""
    results: list[dict[str, Any]] = []
    failed = False
    for path in files:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("larger than 1 MiB: split the bundle")
            body = path.read_bytes()
            json.loads(body)
        except OSError as exc:
            raise fail(InputError("input.missing",
                                  f"cannot read {path.name}: {exc.strerror}")) from None
        except ValueError as exc:
            raise fail(InputError("input.malformed", f"{path.name}: {exc}")) from None
        status, answer = _post(proxy, "/v1/medclave/records", body, token)
        failed = failed or status != 200
        results.append({"file": path.name, "status": status, **answer})
    typer.echo(json.dumps({"results": results}, indent=2))
    if failed:
        raise typer.Exit(1)


@app.command("search")
def search_cmd(query: Annotated[str, typer.Argument(help="What to look for")],
               patient: Annotated[str | None, typer.Option(
                   "--patient", help="Patient/ID (or a bare id) to search within")] = None,
               k: Annotated[int, typer.Option("--k", min=1, max=64)] = 8,
               as_json: Annotated[bool, typer.Option("--json", help="Print the JSON answer")] = False,
               proxy: ProxyOpt = "http://127.0.0.1:8080", token: TokenOpt = None) -> None:
    """Search the records you may see (every result authorized for you in the enclave)."""
    if patient is not None and not patient.startswith("Patient/"):
        patient = f"Patient/{patient}"
    body = json.dumps({"query": query, "patient": patient, "k": k}).encode()
    status, answer = _post(proxy, "/v1/medclave/search", body, token)
    if status != 200:
        raise refused_answer(answer)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        for n, hit in enumerate(answer.get("results", []), 1):
            sys.stdout.write(f"[{n}] {hit['reference']} ({hit['why']['reason']}, "
                             f"{hit['score']:.4f})\n    {hit['text']}\n")


