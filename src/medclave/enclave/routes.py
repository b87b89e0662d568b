"""Inner routes served beside the OpenAI API: what a route gets, and what it gives back.

A :class:`Route` serves one inner path (``/v1/audio/transcriptions`` here in the enclave, the
clinical scribe from :mod:`medclave.apps.scribe`, which sits a layer above and is handed to the
service at boot, so the enclave never imports it). The service does what every inference
needs around it: the door (token and Cedar), the tenant's slot, the audit check before and
the entry after. A route returns its answer and what the entry commits to (:class:`RouteResult`);
the content never reaches the log, only HMAC commitments of it under the tenant's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from medclave.enclave.engines.base import Engine, Generation, SamplingParams
from medclave.enclave.hooks import Principal
from medclave.enclave.speech import Transcriber
from medclave.protocol.inference import InnerRequest


@dataclass(frozen=True)
class RouteCall:
    request_id: str
    request: InnerRequest
    principal: Principal
    generation: Generation
    engine: Engine
    speech: Transcriber | None
    created: int  # the answer's timestamp (seconds)


@dataclass(frozen=True)
class RouteResult:
    """The answer (``body`` as ``content_type``) and the entry's content: ``action`` (a code),
    what the prompt and answer commitments cover, ``documents`` (each committed under the
    ``document`` label, in order), the patient (pseudonymised) and the parameters."""

    body: bytes
    content_type: str
    action: str
    prompt: bytes
    answer: str
    params: SamplingParams
    documents: tuple[bytes, ...] = ()
    patient: str | None = None
    completion_tokens: int = 0


class Route(Protocol):
    def __call__(self, call: RouteCall) -> RouteResult: ...
