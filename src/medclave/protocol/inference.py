"""The inference wire protocol between the client (SDK, proxy) and the enclave, version 1.

Outside, the operator's network sees two endpoints and nothing else:

* ``GET /v1/attestation?nonce=HEX`` answers an :class:`~medclave.protocol.evidence.EvidenceBundle`
  whose ``runtime`` (:class:`EnclaveRuntime`) carries the OHTTP key configuration, the model
  digest, the engine and its build, the audit key and the authorization policy digest; the
  hardware report_data binds all of it together with the client's nonce.
* ``POST /v1/ohttp`` carries an Oblivious HTTP request (RFC 9458, ``message/ohttp-req``) or a
  chunked one (draft-ietf-ohai-chunked-ohttp, ``message/ohttp-chunked-req``) for streamed answers.

Inside the encapsulation is a Binary HTTP request (RFC 9292) for the OpenAI-compatible API:
``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/responses`` (the Responses
API), ``GET /v1/models`` and ``GET /v1/models/{id}`` (the id percent-encoded, as the ``openai``
client sends it), with the caller's
``authorization: Bearer ...`` header and a JSON body. The answer is a Binary HTTP response: JSON,
or for ``stream: true`` server-sent events in indeterminate-length content whose trailer carries
the audit receipt. Errors that can be encrypted are: only failures to decapsulate are answered in
the clear (they reveal nothing the operator did not send).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field

from medclave.crypto import bhttp
from medclave.crypto.jose import b64url_decode
from medclave.crypto.ohttp import REQUEST_MEDIA_TYPE as OHTTP_REQUEST
from medclave.crypto.ohttp import RESPONSE_MEDIA_TYPE as OHTTP_RESPONSE
from medclave.crypto.ohttp import KeyConfig
from medclave.crypto.ohttp_chunked import REQUEST_MEDIA_TYPE as CHUNKED_REQUEST
from medclave.crypto.ohttp_chunked import RESPONSE_MEDIA_TYPE as CHUNKED_RESPONSE
from medclave.errors import AttestationError, CryptoError, InputError, MedclaveError

__all__ = [
    "ATTESTATION_PATH",
    "CHUNKED_REQUEST",
    "CHUNKED_RESPONSE",
    "EMBEDDINGS_PATH",
    "INNER_PATHS",
    "NOT_FORWARDED_HEADER",
    "OHTTP_PATH",
    "OHTTP_REQUEST",
    "OHTTP_RESPONSE",
    "OPENAI_CODES",
    "RECEIPT_HEADER",
    "RECORDS_PATH",
    "REPLICA_HEADER",
    "REPLICA_NAME_PATTERN",
    "REPLICA_SNI_SUFFIX",
    "REQUEST_ID_HEADER",
    "RESPONSES_PATH",
    "SCRIBE_PATH",
    "SEARCH_PATH",
    "TRANSCRIPTIONS_PATH",
    "EnclaveRuntime",
    "InnerRequest",
    "catalogue_code",
    "decode_inner_request",
    "decode_receipt_header",
    "encode_inner_request",
    "encode_receipt_header",
    "inner_method",
    "is_models_path",
    "max_body",
    "model_id_of",
    "model_path",
    "needs_receipt",
    "openai_error",
]

VERSION: Final = 1
ATTESTATION_PATH: Final = "/v1/attestation"
OHTTP_PATH: Final = "/v1/ohttp"
EVIDENCE_MEDIA_TYPE: Final = "application/vnd.medclave.evidence+json"

# The inner request names the enclave, not a host the operator routes: one fixed authority, so
# the encapsulated bytes reveal nothing about where the client thinks it is connected.
INNER_SCHEME: Final = "https"
INNER_AUTHORITY: Final = "enclave"
CHAT_PATH: Final = "/v1/chat/completions"
COMPLETIONS_PATH: Final = "/v1/completions"
MODELS_PATH: Final = "/v1/models"
RESPONSES_PATH: Final = "/v1/responses"
# Medclave's own applications inside the encapsulation (enclave/inner_apps.py): sealed
# conversations (POST create, GET list; GET export and DELETE on /{id}; POST /{id}/turns, an
# inference) and the provider's triage alerts. The client share of a sealed conversation
# travels in SHARE_HEADER, inside the encapsulation only.
MEDCLAVE_PREFIX: Final = "/v1/medclave/"
CONVERSATIONS_PATH: Final = "/v1/medclave/conversations"
TRIAGE_ALERTS_PATH: Final = "/v1/medclave/triage/alerts"
SHARE_HEADER: Final = "medclave-share"
# Speech (issue 14): OpenAI's transcription API (multipart) and the clinical scribe (JSON).
TRANSCRIPTIONS_PATH: Final = "/v1/audio/transcriptions"
SCRIBE_PATH: Final = "/v1/medclave/scribe"
EMBEDDINGS_PATH: Final = "/v1/embeddings"
RECORDS_PATH: Final = "/v1/medclave/records"
SEARCH_PATH: Final = "/v1/medclave/search"
INNER_PATHS: Final = {CHAT_PATH: "POST", COMPLETIONS_PATH: "POST", MODELS_PATH: "GET",
                      RESPONSES_PATH: "POST", TRANSCRIPTIONS_PATH: "POST", SCRIBE_PATH: "POST",
                      EMBEDDINGS_PATH: "POST", RECORDS_PATH: "POST", SEARCH_PATH: "POST"}
# Audio rides only these paths, in chunked OHTTP; every other inner body keeps the small bound.
AUDIO_PATHS: Final = frozenset({TRANSCRIPTIONS_PATH, SCRIBE_PATH})
MAX_MODEL_ID: Final = 256

# Medclave codes answered with OpenAI's own ``code``, which OpenAI clients act on (they trim
# the history for ``context_length_exceeded``); clients map them back (:func:`catalogue_code`).
OPENAI_CODES: Final = {"enclave.context_length_exceeded": "context_length_exceeded",
                       "enclave.model_not_found": "model_not_found"}
_FROM_OPENAI: Final = {v: k for k, v in OPENAI_CODES.items()}

RECEIPT_HEADER: Final = "medclave-receipt"  # base64url of the audit receipt JSON
REQUEST_ID_HEADER: Final = "x-request-id"
# Enclave replicas behind a load balancer (docs/scaling-out.md). Both headers are outside the
# encapsulation, between the proxy and the balancer, and carry nothing secret: the replica a
# request is encapsulated for (the balancer routes on it: a request opens only with that
# replica's key), and the balancer's mark on an error it made itself without forwarding anything.
REPLICA_HEADER: Final = "medclave-replica"
NOT_FORWARDED_HEADER: Final = "medclave-not-forwarded"
REPLICA_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{0,31}$"
# With attested micro-segmentation the proxy's TLS runs to the replica itself, so the balancer
# cannot read the header: it routes on the TLS ClientHello's server name instead (RFC 6066 §3,
# in the clear), NAME + this suffix. ``.invalid`` (RFC 6761 §6.4) never resolves, so the name
# only ever means "replica NAME" and collides with no real host.
REPLICA_SNI_SUFFIX: Final = ".replica.medclave.invalid"

MAX_NONCE_BYTES: Final = 64
MIN_NONCE_BYTES: Final = 16
MAX_INNER_BODY: Final = 1024 * 1024
MAX_OUTER_REQUEST: Final = MAX_INNER_BODY + 64 * 1024
# OpenAI's transcription upload limit (25 MB), plus room for the multipart or JSON framing
# (base64 in JSON grows audio by a third).
MAX_AUDIO_BODY: Final = 36 * 1024 * 1024
MAX_OUTER_AUDIO_REQUEST: Final = MAX_AUDIO_BODY + 64 * 1024
# Inner requests carry a handful of headers; a tight bound keeps a hostile request small.
INNER_LIMITS: Final = bhttp.Limits(max_message=MAX_OUTER_REQUEST, max_fields=64,
                                   max_field_section=16 * 1024)
AUDIO_LIMITS: Final = bhttp.Limits(max_message=MAX_OUTER_AUDIO_REQUEST, max_fields=64,
                                   max_field_section=16 * 1024)
_FORWARDED_HEADERS: Final = ("authorization", "content-type", "dpop", "accept", SHARE_HEADER)


class EnclaveRuntime(BaseModel):
    """The typed view of ``runtime`` for an inference enclave: every field is required.

    ``runtime`` itself stays plain JSON in the bundle (its canonical form is what report_data
    binds); this model only reads it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    ohttp_key_config: str = Field(max_length=4096)
    model_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    model_id: str = Field(max_length=128)
    engine: str = Field(max_length=64)
    engine_build: str = Field(max_length=128)
    audit_public_key: str = Field(max_length=128)
    audit_origin: str = Field(max_length=256)
    policy_digest: str | None = Field(default=None, max_length=128)
    # Fingerprints of the key brokers the enclave takes keys from (kbs.signing).
    kbs_keys: tuple[str, ...] = Field(default=(), max_length=16)
    # Whose tokens the enclave accepts ({"issuer", "jwks"}); empty: it checks no token.
    token_issuers: tuple[dict[str, str], ...] = Field(default=(), max_length=16)
    # Speech (issue 14), all None where the enclave takes no audio: the Whisper model and its
    # runtime, what is kept of the audio ("none": nothing outlives the request) and the
    # transcription worker's write-forbidding sandbox ("landlock", or "none").
    speech_model_id: str | None = Field(default=None, max_length=128)
    speech_model_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    speech_engine_build: str | None = Field(default=None, max_length=128)
    audio_retention: str | None = Field(default=None, max_length=32)
    speech_sandbox: str | None = Field(default=None, max_length=32)

    @classmethod
    def from_runtime(cls, runtime: dict[str, Any]) -> EnclaveRuntime:
        try:
            return cls.model_validate(runtime)
        except ValueError as exc:
            raise AttestationError(
                "attestation.malformed", "the runtime lacks an inference enclave's fields"
            ) from exc

    def key_config(self) -> KeyConfig:
        """The pinned OHTTP key configuration (raises ``attestation.malformed``)."""
        try:
            config = KeyConfig.decode(base64.b64decode(self.ohttp_key_config, validate=True))
        except (binascii.Error, ValueError, CryptoError) as exc:
            raise AttestationError(
                "attestation.malformed", "runtime.ohttp_key_config is not a key configuration"
            ) from exc
        if not config.supports():
            raise AttestationError(
                "attestation.malformed", "runtime.ohttp_key_config offers no supported suite"
            )
        return config

    def audit_key(self) -> bytes:
        try:
            raw = base64.b64decode(self.audit_public_key, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AttestationError("attestation.malformed", "audit key is not base64") from exc
        if len(raw) != 32:
            raise AttestationError("attestation.malformed", "audit key is not an Ed25519 key")
        return raw


def replica_server_name(name: str) -> str:
    """The TLS server name (SNI) that routes to replica ``name`` through a TLS-passthrough
    balancer (``REPLICA_SNI_SUFFIX``)."""
    return name + REPLICA_SNI_SUFFIX


def parse_nonce(text: str) -> bytes:
    """A client nonce from its hex form: 16..64 bytes (report_data hashes it, any size fits)."""
    if len(text) > 2 * MAX_NONCE_BYTES:
        raise InputError("input.malformed", "the nonce is 16 to 64 bytes of hex")
    try:
        nonce = bytes.fromhex(text)
    except ValueError as exc:
        raise InputError("input.malformed", "the nonce is 16 to 64 bytes of hex") from exc
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES or text != nonce.hex():
        raise InputError("input.malformed", "the nonce is 16 to 64 bytes of lower-case hex")
    return nonce


@dataclass(frozen=True)
class InnerRequest:
    """What the enclave acts on, once decapsulated: never logged, never written."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)

    def header_map(self) -> dict[str, str]:
        """Headers as a mapping; a repeated header keeps all values joined (RFC 9110 §5.3),
        which makes a doubled ``authorization`` fail to parse instead of picking one."""
        out: dict[str, str] = {}
        for k, v in self.headers:
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise InputError("input.malformed", "the request body is not JSON") from exc


def encode_inner_request(
    method: str,
    path: str,
    *,
    body: bytes = b"",
    authorization: str | None = None,
    extra_headers: tuple[tuple[str, str], ...] = (),
    content_type: str = "application/json",
) -> bytes:
    """The Binary HTTP request the client encapsulates (``content_type``: the body's; the
    transcription API's is ``multipart/form-data; boundary=...``)."""
    limit = max_body(path)
    if len(body) > limit:
        raise InputError("input.too_large", f"request body over {limit} bytes")
    headers: list[tuple[str, str]] = []
    if authorization:
        headers.append(("authorization", authorization))
    if body:
        headers.append(("content-type", content_type))
    headers.extend((k.lower(), v) for k, v in extra_headers)
    request = bhttp.Request(method, INNER_SCHEME, INNER_AUTHORITY, path, tuple(headers), body)
    return request.encode()


def decode_inner_request(data: bytes) -> InnerRequest:
    """Parse a decapsulated request under tight bounds; keep only the headers the API uses.

    Raises ``protocol.bad_message`` (framing) or ``input.too_large``. Whether the path and
    method are served is the server's decision (answered inside the encapsulation).
    """
    # Framing is parsed under the audio bound (the path is inside), then the body is held to
    # its path's own bound.
    request = bhttp.decode_request(data, AUDIO_LIMITS if len(data) > MAX_OUTER_REQUEST
                                   else INNER_LIMITS)
    path = request.path.split("?", 1)[0]
    limit = max_body(path)
    if len(request.content) > limit or len(data) > limit + 64 * 1024:
        raise InputError("input.too_large", f"request body over {limit} bytes")
    headers = tuple((k, v) for k, v in request.headers if k in _FORWARDED_HEADERS)
    return InnerRequest(request.method.upper(), path, headers, request.content)


def max_body(path: str) -> int:
    """How large an inner body ``path`` takes: audio paths more, every other the small bound."""
    return MAX_AUDIO_BODY if path.split("?", 1)[0] in AUDIO_PATHS else MAX_INNER_BODY


def model_path(model_id: str) -> str:
    """``GET /v1/models/{id}``'s path, the id percent-encoded whole (a ``/`` in it too)."""
    return f"{MODELS_PATH}/{quote(model_id, safe='')}"


def model_id_of(path: str) -> str | None:
    """The model id a ``/v1/models/{id}`` path names; None for any other path."""
    prefix = MODELS_PATH + "/"
    if not path.startswith(prefix) or len(path) > len(prefix) + 3 * MAX_MODEL_ID:
        return None
    try:
        model_id = unquote(path[len(prefix):], errors="strict")
    except UnicodeDecodeError:
        return None
    return model_id if 0 < len(model_id) <= MAX_MODEL_ID else None


def is_models_path(path: str) -> bool:
    """Listing the models or reading one: no inference, so no inference authorization."""
    return path == MODELS_PATH or model_id_of(path) is not None


def needs_receipt(method: str, path: str) -> bool:
    """Whether a successful answer must carry an audit receipt: every inference does; listing
    models and managing sealed conversations (no inference) do not. Appending a conversation
    turn (``POST .../turns``) is an inference."""
    if is_models_path(path):
        return False
    if path.startswith(MEDCLAVE_PREFIX):
        return method == "POST" and path.endswith("/turns")
    return True


def inner_method(path: str) -> str | None:
    """The method an inner path takes; None for a path the enclave does not serve."""
    return INNER_PATHS.get(path) or ("GET" if model_id_of(path) is not None else None)


def catalogue_code(code: str) -> str:
    """The Medclave code an error answer's ``code`` stands for."""
    return _FROM_OPENAI.get(code, code)


def openai_error(code: str, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None) -> bytes:
    """An error body in the OpenAI shape (``openai`` raises typed errors from it), with the
    Medclave code as ``code`` so scripts can rely on it (OpenAI's own where one exists, such as
    ``context_length_exceeded``), and the request field at fault as ``param``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json.dumps(body, separators=(",", ":")).encode()


def encode_receipt_header(receipt_json: bytes) -> str:
    return base64.urlsafe_b64encode(receipt_json).rstrip(b"=").decode()


def decode_receipt_header(value: str, *, max_bytes: int = 64 * 1024) -> bytes:
    if len(value) > max_bytes * 4 // 3 + 4:
        raise InputError("input.too_large", "receipt header too large")
    try:
        # Strict (crypto.jose): one text per receipt, as for every base64url Medclave reads.
        return b64url_decode(value, what="receipt header")
    except MedclaveError as exc:
        raise InputError("input.malformed", "receipt header is not base64url") from exc
