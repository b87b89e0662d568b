"""``POST /v1/medclave/scribe``: a visit's audio (or transcript) to a SOAP note and codes.

The request is ``multipart/form-data`` (``file``: the audio; or ``transcript``: the typed
visit) or JSON (``{"transcript": ...}``), with optional ``patient`` (a FHIR Patient id or
``Patient/id``) and ``context`` (JSON: ``reason``, ``encounter``). The answer::

    {"id", "object": "medclave.scribe", "created", "model", "speech_model",
     "audio": {"sha256", "duration", "retained": false} | null,
     "transcript": {"text", "speakers_known", "turns": [...], "sentences": [...]},
     "note": {"text", "sections": {"subjective": [{"text", "sentence", "start", "end",
                                                   "drafted_by"}], ...}},
     "codes": [{"system", "code", "display", "confidence", "sentence", "start", "end",
                "status": "suggested"}],
     "fhir": {DocumentReference}}

``start``/``end`` are character offsets in ``transcript.text``. The audit entry (``action``
``scribe``, the patient pseudonymised under the tenant's key) commits to the audio's SHA-256
(or the typed transcript's) as its prompt, the note text as its answer, and two documents: the
codes (canonical JSON) and the DocumentReference; none of the text. The audio and transcript
live in this request's memory only; the audio bytes are dropped as soon as the worker has
transcribed them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Final

from medclave.apps.scribe import fhir, icd, soap, turns
from medclave.crypto.canonical import canonical_json, load_json
from medclave.enclave.audio_api import parse_form
from medclave.enclave.routes import RouteCall, RouteResult
from medclave.errors import EnclaveError, InputError

ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
MAX_TRANSCRIPT: Final = 200_000
MAX_CONTEXT: Final = 8 * 1024
# Whisper's initial prompt: the kind of speech to expect (it improves clinical words).
VISIT_PROMPT: Final = "A clinical visit between a doctor and a patient."


class ScribeRoute:
    """The route; ``model_id`` names the chat model that drafts the note."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    def __call__(self, call: RouteCall) -> RouteResult:
        fields, audio = _parse(call)
        patient = fhir.reference("Patient", _str(fields.get("patient"), "patient", 128))
        context = _context(fields.get("context"))
        encounter = fhir.reference("Encounter", _str(context.get("encounter"), "encounter", 128))
        audio_info: dict[str, Any] | None = None
        if audio is not None:
            if call.speech is None:
                raise EnclaveError("enclave.speech_unavailable", "no speech model here")
            digest = hashlib.sha256(audio).hexdigest()
            heard = call.speech.transcribe(audio, prompt=VISIT_PROMPT)
            audio = None  # the bytes go now, not at the end of the request
            transcript = turns.from_segments(heard.segments)
            audio_info = {"sha256": digest, "duration": heard.duration, "retained": False}
            committed = f"audio-sha256:{digest}"
            speech_model: str | None = call.speech.model_id
        else:
            text = _str(fields.get("transcript"), "transcript", MAX_TRANSCRIPT)
            if not text or not text.strip():
                raise InputError("input.missing", "send the visit's audio (file) or transcript",
                                 param="file")
            transcript = turns.from_text(text)
            committed = f"transcript-sha256:{hashlib.sha256(text.encode()).hexdigest()}"
            speech_model = None
        statements = soap.draft_note(transcript, call.engine, call.generation)
        assessment = [(s.sentence, transcript.sentence(s.sentence).text, s.start, s.end, s.text)
                      for s in statements if s.section == "assessment"]
        codes = [{"system": ICD10CM, "code": c.code, "display": c.display,
                  "confidence": c.confidence, "sentence": c.sentence, "start": c.start,
                  "end": c.end, "status": "suggested"} for c in icd.suggest(assessment)]
        note = soap.render(statements)
        created = datetime.fromtimestamp(call.created, UTC)
        resource = fhir.document_reference(note, when=created, patient=patient,
                                           encounter=encounter)
        answer = {
            "id": f"scribe-{call.request_id}", "object": "medclave.scribe",
            "created": call.created, "model": self.model_id, "speech_model": speech_model,
            "audio": audio_info,
            "transcript": _transcript(transcript),
            "note": {"text": note, "sections": {
                name: [{"text": s.text, "sentence": s.sentence, "start": s.start, "end": s.end,
                        "drafted_by": s.drafted_by} for s in statements if s.section == name]
                for name in soap.SECTIONS}},
            "codes": codes,
            "fhir": resource,
        }
        return RouteResult(
            body=json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode(),
            content_type="application/json", action="scribe", prompt=committed.encode(),
            answer=note, params=soap.DRAFT_PARAMS,
            documents=(canonical_json(codes), canonical_json(resource)),
            patient=patient, completion_tokens=call.generation.tokens)


def _transcript(transcript: turns.Transcript) -> dict[str, Any]:
    return {"text": transcript.text, "speakers_known": transcript.speakers_known,
            "turns": [{"index": t.index, "speaker": t.speaker, "text": t.text,
                       "start_time": t.start_time, "end_time": t.end_time}
                      for t in transcript.turns],
            "sentences": [{"id": s.id, "turn": s.turn, "start": s.start, "end": s.end}
                          for s in transcript.sentences]}


def _str(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InputError("input.malformed", f"{name} is text of at most {limit} characters",
                         param=name)
    return value


def _context(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        if len(value) > MAX_CONTEXT:
            raise InputError("input.malformed", "context is too long", param="context")
        value = load_json(value.encode(), what="context")
    if not isinstance(value, dict):
        raise InputError("input.malformed", "context is a JSON object", param="context")
    return value


def _parse(call: RouteCall) -> tuple[dict[str, Any], bytes | None]:
    """The fields and the audio (None: a typed transcript)."""
    media = (call.request.header("content-type") or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        body = load_json(call.request.body, what="the request body")
        if not isinstance(body, dict):
            raise InputError("input.malformed", "the request body is a JSON object")
        return body, None
    parts = parse_form(call.request.body, call.request.header("content-type"))
    fields: dict[str, Any] = {}
    for name in ("patient", "context", "transcript"):
        part = parts.get(name)
        if part is not None:
            try:
                fields[name] = bytes(part.data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError("input.malformed", f"{name} is not UTF-8") from exc
    audio = parts.get("file")
    if audio is None or audio.filename is None:
        return fields, None
    data = bytes(audio.data)
    audio.data.clear()
    return fields, data


def routes(model_id: str) -> dict[str, ScribeRoute]:
    """What ``medclave enclave serve --scribe`` hands to boot, by inner path."""
    from medclave.protocol.inference import SCRIBE_PATH

    return {SCRIBE_PATH: ScribeRoute(model_id)}
