"""Request handling inside the enclave: attest, decapsulate, authorize, infer, audit, encapsulate.

Stateless by design: a prompt and its answer exist only in memory for the life of a request.
Nothing here logs content: log lines carry the request id, the inner path, sizes, token counts,
status and timings. Errors inside the encapsulation are answered inside it as OpenAI error
objects (``message``, ``type``, ``param``, ``code``; the caller, who owns the data, gets the
detail) with their HTTP status: 404 for a path or model not served, 405 for a method, 400
``context_length_exceeded`` for a prompt the engine cannot fit, before any stream starts. Only a
request that cannot be decapsulated is answered in the clear.

Every allowed inference is recorded with how it ended and how many completion tokens left the
enclave: a whole answer when the engine returns (or fails), a streamed one by its
:class:`~medclave.enclave.streaming.StreamedAnswer` however the stream ends. A tenant may have
``max_concurrent_per_tenant`` inferences in progress (:mod:`medclave.enclave.limits`); one more
is answered ``enclave.busy`` inside the encapsulation, since the tenant is known only there.

Each engine call runs for a :class:`~medclave.enclave.engines.base.Generation` naming the tenant
and user (the engine's fair queue takes turns by them) and carrying the request's
:class:`~medclave.enclave.engines.base.Cancel`, which the router sets when the client leaves: a
whole answer still queued never starts, one generating stops at its next token, and either is
recorded ``client_gone`` (issue 10 §4). The Responses API (:mod:`medclave.enclave.responses`) is
a chat request answered in another shape; the only state it keeps, for
``previous_response_id``, stays in this process's memory (:mod:`.response_store`).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from medclave.audit.entry import Ending
from medclave.crypto import bhttp
from medclave.crypto.ohttp import decapsulate_request
from medclave.crypto.ohttp_chunked import ChunkedRequestDecoder, ChunkedResponseEncoder
from medclave.enclave import openai_api as api
from medclave.enclave import responses
from medclave.enclave.attester import HostPlatform
from medclave.enclave.engines.base import (
    Cancel,
    Choice,
    Completion,
    Engine,
    Generation,
    GenerationCancelled,
    SamplingParams,
    generation_scope,
)
from medclave.enclave.hooks import (
    AuditSink,
    AuthorizationHook,
    InferenceRecord,
    Principal,
    Refused,
    policy_code,
)
from medclave.enclave.inner_apps import AppAnswer, ChatTurn, InnerApp
from medclave.enclave.keys import KeyRing
from medclave.enclave.limits import Busy, Slot, Slots
from medclave.enclave.replay import ReplayGuard
from medclave.enclave.response_store import ResponseStore
from medclave.enclave.retrieval import (
    Augmented,
    RetrievalApi,
    document_commitments,
    egress_filter,
    encode,
    hit_policies,
    retrieval_spec,
)
from medclave.enclave.routes import Route, RouteCall
from medclave.enclave.speech import Transcriber
from medclave.enclave.streaming import AnswerStream, Shaper, StreamedAnswer, ending_of
from medclave.errors import EnclaveError, InputError, MedclaveError
from medclave.ops.tracing import span
from medclave.protocol import inference as proto
from medclave.protocol.evidence import EvidenceBundle
from medclave.util.clock import Clock

log = logging.getLogger("medclave.enclave")

SERVICE = "medclave-inference/1"
# Endings after which a Responses answer may be continued (previous_response_id).
_CONTINUABLE: frozenset[Ending] = frozenset({"stop", "length", "tool_calls"})


@dataclass(frozen=True)
class EnclaveIdentity:
    """What the runtime states besides the OHTTP key: fixed for the enclave's life."""

    model_id: str
    model_digest: str
    audit_public_key: bytes
    audit_origin: str
    policy_digest: str | None
    # Fingerprints of the key brokers the enclave takes keys from (kbs.signing); () if none.
    kbs_keys: tuple[str, ...] = ()
    # Whose tokens the door accepts: {"issuer", "jwks"} per issuer, jwks a URL or the
    # "sha256:" digest of a static key set; () when the door is off (sim development only).
    token_issuers: tuple[dict[str, str], ...] = ()
    # The proof that this build is a published release (audit/release.py), served with every
    # attestation so a relying party checks it offline; None when none was given.
    release_proof: dict[str, Any] | None = None


@dataclass
class OuterResponse:
    """What the router sends: a whole body or a stream of encapsulated bytes, which the router
    closes however the response ends (:meth:`AnswerStream.close`)."""

    status: int
    media_type: str
    body: bytes = b""
    stream: AnswerStream | None = None


@dataclass
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    streamed: StreamedAnswer | None = None
    tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return self.streamed.completion_tokens if self.streamed is not None else self.tokens


_RECORDS_ROUTES = frozenset({proto.RECORDS_PATH, proto.SEARCH_PATH, proto.EMBEDDINGS_PATH})


def _filtered(completion: Completion, allow: frozenset[str]) -> Completion:
    """The answer with links, images and URLs off the allow-list removed (every choice)."""
    choices = tuple(replace(c, text=egress_filter(c.text, allow)) for c in completion.all_choices)
    return replace(completion, text=choices[0].text, choices=choices)


_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def _error_answer(rid: str, exc: MedclaveError) -> _Answer:
    status = exc.status
    if status >= 500:
        message = exc.public_message
        kind = "server_error"
    else:
        message = exc.detail
        kind = _ERROR_TYPES.get(status, "invalid_request_error")
    headers = [("content-type", "application/json"), (proto.REQUEST_ID_HEADER, rid)]
    if isinstance(exc, Busy):
        headers += exc.headers()
    param = exc.context.get("param")
    return _Answer(status, headers, proto.openai_error(
        proto.OPENAI_CODES.get(exc.code, exc.code), message, kind=kind,
        param=param if isinstance(param, str) else None))


class InferenceService:
    def __init__(self, *, engine: Engine, keys: KeyRing, platform: HostPlatform,
                 identity: EnclaveIdentity, authorization: AuthorizationHook, audit: AuditSink,
                 clock: Clock, max_tokens_limit: int = 1024, max_concurrent_per_tenant: int = 8,
                 retry_after: int = 1, response_store: ResponseStore | None = None,
                 apps: tuple[InnerApp, ...] = (),
                 speech: Transcriber | None = None,
                 routes: Mapping[str, Route] | None = None,
                 records: RetrievalApi | None = None) -> None:
        self.engine = engine
        self.speech = speech
        self.routes: Mapping[str, Route] = dict(routes or {})
        self.records = records
        self.keys = keys
        self.platform = platform
        self.identity = identity
        self.authorization = authorization
        self.audit = audit
        self._clock = clock
        self._limit = max_tokens_limit
        self.tenant_slots = Slots(max_concurrent_per_tenant)
        self._retry_after = retry_after
        self.responses = response_store or ResponseStore(ttl=3600, per_user=64,
                                                         max_bytes=64 * 1024 * 1024)
        self.started = int(clock().timestamp())
        # For operations (medclave.ops): when evidence was last produced, and who counts
        # refusals inside the encapsulation (their codes are not visible outside it).
        self.last_attested: float | None = None
        self.on_refusal: Callable[[str], None] | None = None
        self.replay = ReplayGuard(keys)  # encapsulated requests run once
        self.apps = apps  # applications inside the encapsulation (medclave.enclave.inner_apps)
        # Continuous trust (docs/continuous-trust.md): once a broker says this enclave is
        # revoked, it drops its keys and answers every request enclave.revoked, for good.
        self.revoked: str | None = None
        self._revoke_hooks: list[Callable[[], None]] = [keys.drop]

    # --- revocation ------------------------------------------------------------------------------

    def on_revoke(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (drop a key, close the engine) when this enclave is revoked."""
        self._revoke_hooks.append(hook)

    def revoke(self, reason: str) -> None:
        """Stop serving and drop every key this process holds; there is no way back short of
        a restart, whose boot must pass the brokers again (fail closed)."""
        if self.revoked is not None:
            return
        self.revoked = reason
        log.critical("REVOKED (%s): keys dropped, serving nothing", reason)
        for hook in self._revoke_hooks:
            try:
                hook()
            except Exception as exc:  # dropping the rest matters more
                log.warning("revocation step failed: %s", type(exc).__name__)

    def _refuse_if_revoked(self) -> None:
        if self.revoked is not None:
            raise EnclaveError("enclave.revoked", self.revoked)

    # --- attestation ---------------------------------------------------------------------------

    def runtime(self) -> dict[str, Any]:
        ident = self.identity
        runtime: dict[str, Any] = {
            "service": SERVICE,
            "ohttp_key_config": base64.b64encode(self.keys.config.encode()).decode(),
            "model_id": ident.model_id,
            "model_digest": ident.model_digest,
            "engine": self.engine.name,
            "engine_build": self.engine.build_id,
            "audit_public_key": base64.b64encode(ident.audit_public_key).decode(),
            "audit_origin": ident.audit_origin,
        }
        if ident.policy_digest:
            runtime["policy_digest"] = ident.policy_digest
        if ident.kbs_keys:
            runtime["kbs_keys"] = list(ident.kbs_keys)
        runtime["token_issuers"] = [dict(i) for i in ident.token_issuers]
        if ident.release_proof is not None:
            runtime["release_proof"] = ident.release_proof
        if self.speech is not None:
            # Issue 14: what handles audio, and that none of it is kept (a hospital's policy
            # can require both; medclave.attestation.policy ``audio_retention``).
            runtime["speech_model_id"] = self.speech.model_id
            runtime["speech_model_digest"] = self.speech.digest
            runtime["speech_engine_build"] = self.speech.build_id
            runtime["audio_retention"] = "none"
            runtime["speech_sandbox"] = self.speech.sandbox.mechanism
        return runtime

    def attest(self, nonce: bytes) -> EvidenceBundle:
        self._refuse_if_revoked()
        bundle = self.platform.attester(nonce, self.runtime())
        self.last_attested = time.time()
        return bundle

    # --- the OHTTP door --------------------------------------------------------------------------

    def handle(self, body: bytes, content_type: str, cancel: Cancel | None = None
               ) -> OuterResponse:
        """``cancel``: set (from any thread) when the client has gone; see the module."""
        self._refuse_if_revoked()
        media = content_type.split(";", 1)[0].strip().lower()
        rid = secrets.token_hex(12)
        started = time.perf_counter()
        # Replay protection is per request, not per token (issue 10): once a request has
        # decrypted (so only authenticated requests are recorded), its HPKE ``enc`` (RFC 9458
        # §4.3, fresh per request) goes in a strike register, and the same bytes sent again are
        # refused in the clear with ``protocol.replayed`` before anything runs (RFC 9458 §6.5;
        # see medclave.enclave.replay). Both framings start with the same header and ``enc``.
        usable = self.keys.usable()
        if media == proto.OHTTP_REQUEST:
            plaintext, context = decapsulate_request(usable, body,
                                                     max_size=proto.MAX_OUTER_REQUEST)
            self.replay.admit(body, usable)
            answer = self._process(rid, plaintext, streaming=False, cancel=cancel)
            inner = bhttp.Response(answer.status, tuple(answer.headers), answer.body).encode()
            sealed = context.encapsulate(inner)
            self._log(rid, answer, len(body), len(sealed), started)
            return OuterResponse(200, proto.OHTTP_RESPONSE, sealed)
        if media == proto.CHUNKED_REQUEST:
            decoder = ChunkedRequestDecoder(usable)
            plaintext = b"".join(decoder.feed(body, end=True))
            self.replay.admit(body, usable)
            encoder = decoder.response_encoder()
            answer = self._process(rid, plaintext, streaming=True, cancel=cancel)
            pieces = self._chunked(rid, answer, encoder, len(body), started)
            return OuterResponse(200, proto.CHUNKED_RESPONSE,
                                 stream=AnswerStream(pieces, answer.streamed))
        raise InputError("input.unrecognized",
                         f"send {proto.OHTTP_REQUEST} or {proto.CHUNKED_REQUEST}")

    def _chunked(self, rid: str, answer: _Answer, encoder: ChunkedResponseEncoder,
                 size_in: int, started: float) -> Generator[bytes, None, None]:
        sent = 0
        streamed = answer.streamed
        try:
            if streamed is None:
                whole = bhttp.Response(answer.status, tuple(answer.headers), answer.body)
                out = encoder.final(whole.encode(indeterminate=True))
                sent += len(out)
                yield out
                return
            head = encoder.write(bhttp.response_head(answer.status, tuple(answer.headers)))
            sent += len(head)
            yield head
            for piece in streamed:
                out = encoder.write(bhttp.content_chunk(piece))
                sent += len(out)
                yield out
            if streamed.closed:
                return  # the client has gone, or the server is stopping: no end to send
            outcome = streamed.outcome  # ended: the iteration above ran to the answer's end
            out = encoder.final(bhttp.response_end(outcome.trailers if outcome else ()))
            sent += len(out)
            yield out
        except GeneratorExit:
            raise  # closed by the router (AnswerStream.close), which said how it ended
        except BaseException:
            if streamed is not None:
                streamed.close("error")
            raise
        finally:
            if streamed is not None:
                streamed.close()  # a no-op once the answer has ended (the normal case)
            self._log(rid, answer, size_in, sent, started)

    def _log(self, rid: str, answer: _Answer, size_in: int, size_out: int, started: float) -> None:
        ended = answer.streamed.ended if answer.streamed is not None else None
        log.info("request %s status=%d in=%dB out=%dB tokens=%d ended=%s ms=%.1f", rid,
                 answer.status, size_in, size_out, answer.completion_tokens, ended or "-",
                 (time.perf_counter() - started) * 1000)

    # --- inside the encapsulation --------------------------------------------------------------

    def _process(self, rid: str, plaintext: bytes, *, streaming: bool,
                 cancel: Cancel | None = None) -> _Answer:
        try:
            request = proto.decode_inner_request(plaintext)
            app = next((a for a in self.apps if a.handles(request.path)), None)
            expected = proto.inner_method(request.path)
            if expected is None and app is None:
                return _error_answer(rid, EnclaveError("enclave.no_route",
                                                       f"no route {request.path[:300]}"))
            if app is None and request.method != expected:
                return _error_answer(rid, EnclaveError("enclave.method_not_allowed",
                                                       f"{request.path} takes {expected}"))
            # The door: nothing below runs for a caller the hook refuses.
            try:
                principal = self.authorization.authorize(request)
            except Refused as refused:
                if refused.principal is not None:
                    self._record_refusal(rid, refused.principal)
                raise
            if proto.is_models_path(request.path):
                return self._json(rid, self._models(proto.model_id_of(request.path)))
            if request.path in _RECORDS_ROUTES:
                return self._records_route(rid, principal, request)
            route = self.routes.get(request.path)
            if route is not None:
                return self._route(rid, request, principal, route, cancel or Cancel())
            if request.path in proto.AUDIO_PATHS:
                raise EnclaveError("enclave.speech_unavailable",
                                   f"{request.path} is not served by this enclave")
            conversation: ChatTurn | None = None
            augmented: Augmented | None = None
            if app is not None:
                outcome = app.handle(request, principal)
                if isinstance(outcome, AppAnswer):
                    return self._json(rid, outcome.body, status=outcome.status)
                conversation = outcome
                parsed = api.parse_request(api.ChatRequest, conversation.chat_body())
            elif request.path == proto.RESPONSES_PATH:
                conversation = responses.Conversation(
                    responses.parse_request(request.json()), self.responses,
                    (principal.tenant, principal.subject))
                parsed = api.parse_request(api.ChatRequest, conversation.chat_body())
            else:
                chat = request.path == proto.CHAT_PATH
                raw = request.json()
                spec = retrieval_spec(raw) if chat else None
                parsed = api.parse_request(api.ChatRequest if chat else api.CompletionRequest,
                                           raw)
                if spec is not None:
                    augmented = self._augment(principal, spec, parsed)
            if parsed.model not in (None, self.identity.model_id):
                raise self._no_model(parsed.model or "")
            params = api.sampling(parsed, limit=self._limit,
                                  default_seed=secrets.randbelow(2**31))
            if parsed.stream and not streaming:
                raise EnclaveError("enclave.bad_request",
                                   f"stream: true needs {proto.CHUNKED_REQUEST}")
            # No answer leaves unrecorded: a tenant whose commitment key is unavailable is
            # refused before the engine runs rather than after.
            self.audit.check(principal.tenant)
            slot = self.tenant_slots.take(principal.tenant)
            if slot is None:
                raise Busy(detail=f"tenant {principal.tenant!r} has "
                           f"{self.tenant_slots.limit} inferences in progress; retry later",
                           retry_after=self._retry_after)
            try:
                answer = self._infer(rid, principal, parsed, params, slot,
                                     Generation(principal.tenant, principal.subject,
                                                cancel or Cancel()), conversation, augmented)
            except BaseException:
                slot.release()
                raise
            if answer.streamed is None:
                slot.release()  # a streamed answer releases it when it ends, however it ends
            return answer
        except MedclaveError as exc:
            if self.on_refusal is not None:
                self.on_refusal(exc.code)
            return _error_answer(rid, exc)
        except Exception as exc:  # never let content-bearing detail reach a log line
            log.error("request %s failed: %s", rid, type(exc).__name__)
            return _error_answer(rid, EnclaveError("internal"))

    def _route(self, rid: str, request: proto.InnerRequest, principal: Principal, route: Route,
               cancel: Cancel) -> _Answer:
        """An inner route beside the OpenAI API (medclave.enclave.routes): the same slot and
        audit as an inference; what failed before an answer existed is not recorded (as a
        request that does not parse)."""
        self.audit.check(principal.tenant)
        slot = self.tenant_slots.take(principal.tenant)
        if slot is None:
            raise Busy(detail=f"tenant {principal.tenant!r} has "
                       f"{self.tenant_slots.limit} inferences in progress; retry later",
                       retry_after=self._retry_after)
        try:
            result = route(RouteCall(rid, request, principal,
                                     Generation(principal.tenant, principal.subject, cancel),
                                     self.engine, self.speech,
                                     int(self._clock().timestamp())))
        finally:
            slot.release()
        receipt = self._record(InferenceRecord(
            rid, self._clock(), principal, result.prompt, result.answer, result.params, "stop",
            result.completion_tokens, action=result.action, documents=result.documents,
            patient=result.patient))
        headers = [("content-type", result.content_type), (proto.REQUEST_ID_HEADER, rid)]
        if receipt is not None:
            headers.append((proto.RECEIPT_HEADER, proto.encode_receipt_header(receipt)))
        return _Answer(200, headers, result.body, tokens=result.completion_tokens)

    def _models(self, model_id: str | None) -> dict[str, Any]:
        """``GET /v1/models`` (``model_id`` None) or ``GET /v1/models/{id}``."""
        ident = self.identity
        if model_id is None:
            return api.models_answer(ident.model_id, self.started, ident.model_digest)
        if model_id != ident.model_id:
            raise self._no_model(model_id)
        return api.model_answer(ident.model_id, self.started, ident.model_digest)

    def _no_model(self, model_id: str) -> EnclaveError:
        return EnclaveError("enclave.model_not_found", f"The model {model_id[:256]!r} does not "
                            f"exist here; use {self.identity.model_id!r}", param="model")

    def _json(self, rid: str, body: dict[str, Any], *, receipt: bytes | None = None,
              tokens: int = 0, status: int = 200) -> _Answer:
        headers = [("content-type", "application/json"), (proto.REQUEST_ID_HEADER, rid)]
        if receipt is not None:
            headers.append((proto.RECEIPT_HEADER, proto.encode_receipt_header(receipt)))
        return _Answer(status, headers, json.dumps(body, separators=(",", ":")).encode(),
                       tokens=tokens)

    def _infer(self, rid: str, principal: Principal,
               parsed: api.ChatRequest | api.CompletionRequest, params: SamplingParams,
               slot: Slot, generation: Generation,
               conversation: ChatTurn | None,
               augmented: Augmented | None = None) -> _Answer:
        created = int(self._clock().timestamp())
        model = self.identity.model_id
        chat = isinstance(parsed, api.ChatRequest)
        shape: Callable[[str, int, str, Completion], dict[str, Any]]
        documents: tuple[bytes, ...] = ()
        if augmented is not None:
            # The chunks' policies join the entry's; each chunk is committed, never written.
            principal = replace(principal, policies=tuple(sorted(
                {*principal.policies, *map(policy_code, hit_policies(augmented.hits))}))[:64])
            documents = document_commitments(augmented.hits)
        if isinstance(parsed, api.ChatRequest):
            messages = api.messages_of(parsed)
            if augmented is not None:
                messages = augmented.messages(messages)
            prompt = api.commitment_input(messages, params)
            stream = partial(self.engine.chat_stream, messages, params)
            whole = partial(self.engine.chat, messages, params)
            shape = api.chat_answer
        else:
            text = parsed.text()
            prompt = api.commitment_input(text, params)
            stream = partial(self.engine.complete_stream, text, params)
            whole = partial(self.engine.complete, text, params)
            shape = api.completion_answer
        if conversation is not None:
            shape = conversation.answer

        recording = _Recording(self, rid, principal, prompt, params, conversation,
                               documents)
        commit, record = recording.commit, recording.record

        # What an answer of which nothing left commits to (as a stream closed at once does).
        nothing = api.committed_answer(params, (Choice("", "stop"),))
        if generation.cancel.is_set():  # the client left before the engine was reached
            record(nothing, "client_gone", 0)
            raise EnclaveError("enclave.client_gone")
        if parsed.stream:
            shaper: Shaper
            if conversation is not None:
                shaper = conversation.shaper(rid, created, model)
            else:
                include_usage = bool(parsed.stream_options
                                     and parsed.stream_options.include_usage)
                shaper = api.ChunkShaper(chat, rid, created, model, include_usage)
            try:
                # The engine refuses what it cannot serve (a prompt too long for its context)
                # here, before the stream starts: the caller gets a plain error answer.
                with generation_scope(generation), span("engine generate"):
                    deltas = stream()
            except Busy:
                raise  # the engine's queue is full: refused before the engine ran
            except Exception:
                record(None, "error", 0)
                raise
            streamed = StreamedAnswer(rid, deltas, shaper, record, release=slot.release,
                                      commit=commit)
            return _Answer(200, [("content-type", "text/event-stream"),
                                 (proto.REQUEST_ID_HEADER, rid)], streamed=streamed)
        try:
            with generation_scope(generation), span("engine generate"):
                completion = whole()
        except GenerationCancelled:
            completion = None
        except MedclaveError as exc:
            if not isinstance(exc, Busy):  # refused before the engine ran: nothing to record
                record(None, "error", 0)
            raise
        except Exception:
            # The engine was given the prompt and failed: recorded, with no answer to commit.
            record(None, "error", 0)
            raise
        if completion is None or generation.stopped:
            # Nothing left the enclave: the client had gone before the answer was ready.
            record(nothing, "client_gone", 0)
            raise EnclaveError("enclave.client_gone")
        if augmented is not None and self.records is not None:
            completion = _filtered(completion, self.records.allow)
        body = shape(rid, created, model, completion)
        if augmented is not None:
            body["medclave"] = {"citations": augmented.citations(completion.text)}
        recording.left = completion.all_choices[0]
        receipt = record(api.committed_answer(params, completion.all_choices),
                         ending_of(completion.finish_reason), completion.completion_tokens)
        return self._json(rid, body, receipt=receipt, tokens=completion.completion_tokens)

    # --- records (medclave.enclave.retrieval) ------------------------------------------------

    def _augment(self, principal: Principal, spec: Any, parsed: api.ChatRequest | api.
                 CompletionRequest) -> Augmented:
        if self.records is None:
            raise EnclaveError("enclave.bad_request", "records retrieval is not enabled here",
                               param="medclave")
        if not isinstance(parsed, api.ChatRequest):
            raise EnclaveError("enclave.bad_request", "retrieval is for chat completions")
        if parsed.stream:
            # The egress filter reads the whole answer: a URL split across stream chunks
            # would slip through a chunk-by-chunk filter.
            raise EnclaveError("enclave.bad_request", "retrieval answers are not streamed",
                               param="stream")
        return self.records.augment(principal, spec, api.messages_of(parsed))

    def _records_route(self, rid: str, principal: Principal, request: proto.InnerRequest
                       ) -> _Answer:
        if self.records is None:  # as any path not served
            raise EnclaveError("enclave.no_route", f"no route {request.path}")
        self.audit.check(principal.tenant)
        body = request.json()
        documents: tuple[bytes, ...] = ()
        if request.path == proto.RECORDS_PATH:
            action, answer = "ingest", self.records.ingest(principal, body)
        elif request.path == proto.SEARCH_PATH:
            action, (answer, hits) = "retrieve", self.records.search(principal, body)
            documents = document_commitments(hits)
            principal = replace(principal, policies=tuple(sorted(
                {*principal.policies, *map(policy_code, hit_policies(hits))}))[:64])
        else:
            action, answer = "embed", self.records.embeddings(body)
        # Recorded like an inference: commitments to what was asked and what left (the
        # request body as received, the answer as sent); no sampling happened (params zero).
        text = encode(answer)
        receipt = self._record(InferenceRecord(
            rid, self._clock(), principal, request.body, text.decode(),
            SamplingParams(max_tokens=1, temperature=0.0), "stop", 0, action=action,
            documents=documents))
        return self._json(rid, answer, receipt=receipt)

    def _record(self, record: InferenceRecord) -> bytes | None:
        try:
            with span("audit log append"):
                return self.audit.record(record)
        except MedclaveError as exc:
            # No answer leaves unrecorded; the caller sees a server error, the log the code.
            log.error("request %s audit failed: %s", record.request_id, exc.code)
            raise EnclaveError("internal", "the audit log refused the record") from None

    def _record_refusal(self, rid: str, principal: Principal) -> None:
        try:
            self.audit.record_refusal(rid, self._clock(), principal)
        except MedclaveError as exc:
            # Refused all the same; the operator's log says the record is missing, and why.
            log.error("request %s refusal not recorded: %s", rid, exc.code)


class _Recording:
    """How one inference is recorded: the choice that left the enclave (``left``, set by
    :meth:`commit` when a stream commits it, or by the caller for a whole answer) and the one
    record of it. A continuable conversation remembers the choice only once it is recorded."""

    def __init__(self, service: InferenceService, rid: str, principal: Principal, prompt: bytes,
                 params: SamplingParams, conversation: ChatTurn | None,
                 documents: tuple[bytes, ...] = ()) -> None:
        self._service = service
        self._rid = rid
        self._principal = principal
        self._prompt = prompt
        self._params = params
        self._conversation = conversation
        self._documents = documents
        self.left: Choice | None = None

    def commit(self, choice: Choice) -> str:
        """What the record commits to for ``choice``, which has left."""
        self.left = choice
        return api.committed_answer(self._params, (choice,))

    def record(self, answer: str | None, ended: Ending, tokens: int) -> bytes | None:
        receipt = self._service._record(InferenceRecord(
            self._rid, self._service._clock(), self._principal, self._prompt, answer,
            self._params, ended, tokens, documents=self._documents))
        if self._conversation is not None and self.left is not None and ended in _CONTINUABLE:
            self._conversation.remember(self._rid, self.left)
        return receipt
