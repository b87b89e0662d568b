"""``medclave scribe AUDIO --proxy URL``: a visit recording to a draft SOAP note and codes.

The recording goes to the local proxy (``medclave proxy``), which verifies the enclave's
attestation (and that it states ``audio_retention: none``) and encapsulates the audio to it;
nothing is sent anywhere else and nothing is written here. Exit 0: the draft is printed
(``--json``: the whole answer, see docs/scribe.md); 1: refused; 2: unusable input (a file that
cannot be read, or audio the enclave cannot decode). Errors print as :mod:`medclave.cli.output`
prints every command's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from medclave.cli.output import fail, refused_answer
from medclave.errors import ClientError, InputError

MAX_AUDIO_BYTES = 25 * 1024 * 1024


def scribe_cmd(
    audio: Annotated[Path, typer.Argument(help="the visit recording (WAV, FLAC, MP3, Ogg, WebM)")],
    proxy: Annotated[str, typer.Option("--proxy", help="the local proxy, e.g. "
                                       "http://127.0.0.1:8080")],
    patient: Annotated[str | None, typer.Option("--patient", help="FHIR Patient id")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="reason for the visit")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="MEDCLAVE_API_KEY", help="the proxy's API key or a token")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole answer as JSON")
                       ] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the draft")] = 600.0,
) -> None:
    """Draft a SOAP note, ICD-10-CM suggestions and a FHIR DocumentReference from a visit."""
    import httpx

    try:
        if audio.stat().st_size > MAX_AUDIO_BYTES:
            raise fail(InputError("input.audio_too_large", "over 25 MB"))
        data = audio.read_bytes()
    except OSError as exc:
        raise fail(InputError("input.missing",
                              f"cannot read {audio.name}: {exc.strerror}")) from None
    form: dict[str, str] = {}
    if patient:
        form["patient"] = patient
    if reason:
        form["context"] = json.dumps({"reason": reason})
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.post(f"{proxy.rstrip('/')}/v1/medclave/scribe",
                              files={"file": (audio.name, data)}, data=form, headers=headers,
                              timeout=timeout)
    except httpx.HTTPError as exc:
        raise fail(ClientError("client.upstream_failed",
                               f"proxy unreachable: {exc!r}")) from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"code": "client.upstream_failed",
                          "message": f"proxy answered HTTP {response.status_code}"}}
    if response.status_code != 200:
        raise refused_answer(body)
    if as_json:
        sys.stdout.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        return
    sys.stdout.write(body["note"]["text"])
    sys.stdout.write("\nSuggested ICD-10-CM codes (accept or drop in your EHR):\n")
    for code in body["codes"]:
        sys.stdout.write(f"  {code['code']:<9} {code['confidence']:.2f}  {code['display']}\n")
