"""``POST /v1/audio/transcriptions`` inside the encapsulation, as OpenAI's API takes it.

The body is ``multipart/form-data`` as the ``openai`` package's
``client.audio.transcriptions.create(file=..., model=...)`` sends it: a ``file`` part (the
audio), ``model``, and optionally ``language``, ``prompt``, ``response_format`` (``json``,
``text`` or ``verbose_json``; ``srt`` and ``vtt`` are refused) and ``temperature``. The form is
parsed by ``python-multipart`` (Starlette's parser) in memory, bounded in parts and header sizes:
its low-level ``MultipartParser`` with callbacks into ``bytearray`` s, never its ``FormParser``,
which spools large parts to temporary files.

The audit entry (``action`` ``transcribe``) commits to the SHA-256 of the audio (the prompt
commitment: the hospital, holding the recording, can show which audio this was) and to the
transcript text (the answer commitment); neither the audio nor the text is written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from medclave.enclave.engines.base import SamplingParams
from medclave.enclave.routes import RouteCall, RouteResult
from medclave.enclave.speech import Transcript
from medclave.errors import EnclaveError, InputError

MAX_PARTS: Final = 16
MAX_FIELD_BYTES: Final = 16 * 1024  # every part but the file
WHISPER_MAX_TOKENS: Final = 448  # Whisper's decoder length, the entry's max_tokens
FORMATS: Final = ("json", "text", "verbose_json")
# python-multipart logs what it did not expect, quoting bytes of the body (a form's content is
# PHI here): nothing of it may reach the operator's log.
logging.getLogger("python_multipart").setLevel(logging.CRITICAL + 1)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


def parse_form(body: bytes, content_type: str | None) -> dict[str, _Part]:
    """The parts of a ``multipart/form-data`` body by name; ``input.malformed`` otherwise."""
    media, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise InputError("input.malformed", "send multipart/form-data with a boundary")
    if not body:  # (the parser takes no empty body: found by the fuzz test)
        raise InputError("input.malformed", "the form is empty")
    parts: list[_Part] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    headers: dict[bytes, bytes] = {}

    def begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise InputError("input.malformed", f"more than {MAX_PARTS} form parts")
        parts.append(_Part())
        headers.clear()

    def field_(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def header_end() -> None:
        headers[bytes(header["field"]).lower()] = bytes(header["value"])
        header["field"].clear()
        header["value"].clear()

    def headers_done() -> None:
        disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise InputError("input.malformed", "a form part without a name")
        part = parts[-1]
        part.name = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:
            part.filename = params[b"filename"].decode("utf-8", "replace")

    def data_(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.data += data[start:end]
        if part.filename is None and len(part.data) > MAX_FIELD_BYTES:
            raise InputError("input.malformed", f"form field {part.name[:64]!r} is too long")

    parser = MultipartParser(boundary, {
        "on_part_begin": begin, "on_header_field": field_, "on_header_value": value,
        "on_header_end": header_end, "on_headers_finished": headers_done,
        "on_part_data": data_}, max_size=len(body))
    try:
        written = parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InputError("input.malformed", "the form does not parse") from exc
    if written != len(body):
        raise InputError("input.malformed", "the form does not parse")
    out: dict[str, _Part] = {}
    for part in parts:
        if part.name in out:
            raise InputError("input.malformed", f"form field {part.name[:64]!r} is repeated")
        out[part.name] = part
    return out


def _text(parts: dict[str, _Part], name: str) -> str | None:
    part = parts.get(name)
    if part is None:
        return None
    try:
        return bytes(part.data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("input.malformed", f"form field {name} is not UTF-8") from exc


def verbose(transcript: Transcript) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` shape (its segment fields that Whisper here knows)."""
    return {"task": "transcribe", "language": "english", "duration": transcript.duration,
            "text": transcript.text,
            "segments": [{"id": i, "start": s.start, "end": s.end, "text": s.text,
                          "temperature": 0.0} for i, s in enumerate(transcript.segments)]}


def transcriptions(call: RouteCall) -> RouteResult:
    """The route (see the module)."""
    if call.speech is None:
        raise EnclaveError("enclave.speech_unavailable", "no speech model in this enclave")
    parts = parse_form(call.request.body, call.request.header("content-type"))
    audio = parts.get("file")
    if audio is None or audio.filename is None:
        raise InputError("input.missing", "the form has no file part", param="file")
    model = _text(parts, "model")
    if model not in (None, call.speech.model_id, "whisper-1"):
        raise EnclaveError("enclave.model_not_found",
                           f"The model {model[:128]!r} does not exist here; use "
                           f"{call.speech.model_id!r}", param="model")
    fmt = _text(parts, "response_format") or "json"
    if fmt not in FORMATS:
        raise EnclaveError("enclave.bad_request", f"response_format is one of {FORMATS}",
                           param="response_format")
    language = _text(parts, "language")
    if language not in (None, "en"):
        raise EnclaveError("enclave.bad_request", "this speech model transcribes English only",
                           param="language")
    try:
        temperature = float(_text(parts, "temperature") or 0.0)
    except ValueError:
        raise EnclaveError("enclave.bad_request", "temperature is a number",
                           param="temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise EnclaveError("enclave.bad_request", "temperature is in [0, 1]",
                           param="temperature")
    data = bytes(audio.data)
    audio.data.clear()
    digest = hashlib.sha256(data).hexdigest()
    transcript = call.speech.transcribe(data, prompt=_text(parts, "prompt"),
                                        temperature=temperature)
    del data
    if fmt == "text":
        body, media = (transcript.text + "\n").encode(), "text/plain; charset=utf-8"
    else:
        shaped = verbose(transcript) if fmt == "verbose_json" else {"text": transcript.text}
        body, media = json.dumps(shaped, separators=(",", ":")).encode(), "application/json"
    return RouteResult(body=body, content_type=media, action="transcribe",
                       prompt=f"audio-sha256:{digest}".encode(), answer=transcript.text,
                       params=SamplingParams(max_tokens=WHISPER_MAX_TOKENS,
                                             temperature=temperature))
