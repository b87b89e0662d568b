"""One attested channel to an enclave: attest, pin, encapsulate, and re-attest when needed.

Nothing is sent before :func:`~medclave.client.verify.verify_enclave` accepted a fresh
attestation: the first request attests; later ones reuse the pinned key configuration until
``reattest_after`` has passed, or the enclave answers ``crypto.key_unknown`` (it rotated its key
and the grace period ended) or ``crypto.decrypt_failed`` (a restarted enclave whose new key has
the old key id), when the session attests again (with a new nonce) and retries once. A new key
is only ever taken from a verified attestation.

Every request is a fresh HPKE encapsulation (RFC 9458 §4.3); streamed answers use chunked OHTTP
(draft-ietf-ohai-chunked-ohttp) and a Binary HTTP indeterminate-length response whose trailer
carries the audit receipt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import httpx

from medclave import errors
from medclave.attestation import AppraisalPolicy
from medclave.attestation.collateral import Collateral
from medclave.audit.receipt import VerifiedReceipt, verify_receipt
from medclave.client.verify import VerifiedEnclave, verify_enclave
from medclave.crypto import bhttp
from medclave.crypto.ohttp import encapsulate_request
from medclave.crypto.ohttp_chunked import ChunkedRequestEncoder
from medclave.errors import AuditError, ClientError, CryptoError, MedclaveError
from medclave.ops.logs import outgoing_headers
from medclave.protocol import inference as proto
from medclave.protocol.bhttp_stream import ResponseStreamDecoder
from medclave.util.clock import Clock, system_clock

log = logging.getLogger("medclave.client")

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
NONCE_BYTES = 32
# Errors the enclave answers in the clear when it could not open a request (RFC 9458 §4.3/§5.2):
# its key is not the pinned one (rotated, or the replica restarted), nothing ran; the session
# attests again and sends the request once more, encapsulated to the newly verified key.
_KEY_REFUSALS = ("crypto.key_unknown", "crypto.decrypt_failed")


def error_from_body(status: int, body: bytes) -> MedclaveError:
    """The catalogue error an answer names (``{"error": {"code": ...}}``), else upstream_failed.
    Its ``context["answered"]`` is the HTTP status: the error came in a clear answer."""
    try:
        import json

        code = proto.catalogue_code(json.loads(body[:MAX_ERROR_BYTES])["error"]["code"])
    except (ValueError, KeyError, TypeError, RecursionError):  # UnicodeDecodeError: a ValueError
        return ClientError("client.upstream_failed", f"enclave answered HTTP {status}",
                           answered=status)
    if not isinstance(code, str) or code not in errors.CATALOGUE:
        return ClientError("client.upstream_failed", f"enclave answered HTTP {status}",
                           answered=status)
    family = code.split(".", 1)[0]
    todo: list[type[MedclaveError]] = [MedclaveError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if family in sub.family:
                return sub(code, answered=status)
            todo.append(sub)
    return MedclaveError(code, answered=status)


def _answer_error(response: httpx.Response, body: bytes) -> MedclaveError:
    """A non-200 answer's error; ``context["sent"]`` False only when the balancer in front of
    replicas says it forwarded nothing (``NOT_FORWARDED_HEADER`` on the 503 it makes itself when
    no server could be connected to or the queue timed out, ops/balancer.py). Only that, and a
    connection that never opened, say "not sent"; every other failure may have reached an
    engine (docs/scaling-out.md)."""
    if (response.status_code == 503
            and response.headers.get(proto.NOT_FORWARDED_HEADER) is not None):
        return ClientError("client.upstream_failed", "the balancer reached no replica",
                           sent=False)
    return error_from_body(response.status_code, body)


def _unreachable(exc: httpx.HTTPError) -> ClientError:
    """A transport failure; ``sent`` False only when no connection ever opened (httpx's
    ConnectError and ConnectTimeout: the TCP or TLS handshake failed, so not a byte of the
    request left). A failure after that (a reset, a read timeout, a closed stream) may come
    after the request reached the engine: never known to be unsent."""
    sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
    return ClientError("client.upstream_failed", f"enclave unreachable: {exc!r}", sent=sent)


def key_refused(exc: MedclaveError) -> bool:
    """The enclave said, in the clear, that it could not open the request with its key."""
    return exc.code in _KEY_REFUSALS and "answered" in exc.context


@dataclass(frozen=True)
class InnerResponse:
    """A decapsulated answer: the enclave's status, headers and body."""

    status: int
    headers: bhttp.Fields
    body: bytes
    receipt: VerifiedReceipt | None = None
    replica: str | None = None  # the replica that served it (client/replicas.py)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Abort:
    """Drops an in-flight whole (not streamed) request from another thread, e.g. when the app
    behind the proxy left: the request's own connection is shut down, which wakes the thread
    waiting for the answer (closing a socket does not, on Linux), and the enclave sees its client
    leave and stops generating within a token. Safe to call before the connection exists (it is
    then shut down as soon as it does) and more than once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.requested = False

    def trace(self, name: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace hook: keeps the socket of the connection the request opens."""
        if name != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._sock = sock if isinstance(sock, socket.socket) else None
            if self.requested:
                _shutdown(self._sock)

    def __call__(self) -> None:
        with self._lock:
            self.requested = True
            _shutdown(self._sock)


class StreamedResponse:
    """A streamed answer: ``status`` and ``headers`` are read on creation, then
    :meth:`iter_content` yields the content as it is decrypted. The receipt, from the trailer,
    is verified once the stream has ended (``receipt``)."""

    def __init__(self, session: EnclaveSession, enclave: VerifiedEnclave,
                 response: httpx.Response, encoder: ChunkedRequestEncoder, *,
                 on_close: Callable[[], None] | None = None) -> None:
        self._on_close: list[Callable[[], None]] = [on_close] if on_close is not None else []
        self.replica: str | None = None  # the replica that serves it (client/replicas.py)
        self._session = session
        self._enclave = enclave
        self._response = response
        self._chunks = encoder.response_decoder()
        self._message = ResponseStreamDecoder(proto_limits())
        self._raw = response.iter_raw()
        self._pending: list[bytes] = []
        self._ended = False
        self.receipt: VerifiedReceipt | None = None
        try:
            while not self._message.head_complete and not self._ended:
                self._pending.extend(self._pull())
        except BaseException:
            self.close()
            raise
        if self._message.status is None:
            self.close()
            raise CryptoError("protocol.bad_message", "the stream ended before its status")
        self.status: int = self._message.status
        self.headers: bhttp.Fields = self._message.headers

    def header(self, name: str) -> str | None:
        return self._message.header(name)

    def _pull(self) -> list[bytes]:
        """Content decrypted from the next piece of the HTTP body (all the rest at its end)."""
        try:
            raw = next(self._raw)
        except StopIteration:
            self._ended = True
            out: list[bytes] = []
            for plain in self._chunks.close():
                out.extend(self._message.feed(plain))
            out.extend(self._message.close())
            return out
        except httpx.HTTPError as exc:
            raise ClientError("client.upstream_failed", f"stream broke: {exc!r}") from exc
        out = []
        for plain in self._chunks.feed(raw):
            out.extend(self._message.feed(plain))
        return out

    def iter_content(self) -> Iterator[bytes]:
        try:
            while self._pending:
                yield self._pending.pop(0)
            while not self._ended:
                yield from self._pull()
            failed = self._message.trailer("medclave-error") is not None
            # A stream carries its receipt in the trailer; a whole answer sent in chunked OHTTP
            # (an upload's, see EnclaveSession.upload) in its header section.
            receipt = (self._message.trailer(proto.RECEIPT_HEADER)
                       or self._message.header(proto.RECEIPT_HEADER))
            self.receipt = self._session.check_receipt(
                self._enclave, receipt,
                self._message.header(proto.REQUEST_ID_HEADER),
                required=self.status == 200 and not failed)
        finally:
            # Also when abandoned (GeneratorExit, maybe from the garbage collector): the stream
            # has a connection pool of its own (see EnclaveSession._open_stream), so closing here
            # never waits on a lock this thread might hold.
            self.close()

    def close(self) -> None:
        self._response.close()
        while self._on_close:  # each once, however often close is called
            self._on_close.pop(0)()

    def on_close(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once when the stream closes."""
        self._on_close.append(hook)

    def abort(self) -> None:
        """Drop the stream now, from any thread: the connection is shut down, which also wakes
        a thread waiting in :meth:`iter_content` (closing a socket does not, on Linux), and the
        enclave sees the client leave. The waiting thread's read then fails."""
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> StreamedResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _client(timeout: float, tls: ssl.SSLContext | None) -> httpx.Client:
    # TCP_NODELAY: small encapsulated messages must not wait out Nagle and a delayed ACK.
    verify: ssl.SSLContext | bool = tls if tls is not None else True
    return httpx.Client(timeout=timeout, verify=verify, transport=httpx.HTTPTransport(
        verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]))


def proto_limits() -> bhttp.Limits:
    return bhttp.Limits(max_message=MAX_RESPONSE_BYTES)


class EnclaveSession:
    """``EnclaveSession(url, policy)``: thread-safe; share one per upstream enclave.

    ``http`` replaces the session's own HTTP client (tests); streams then share its pool, so
    iterate them to the end or close them rather than leave them to the garbage collector.
    """

    def __init__(self, url: str, policy: AppraisalPolicy, *,
                 sim_roots: frozenset[str] = frozenset(),
                 trusted_roots: frozenset[str] | None = None,
                 reattest_after: timedelta = timedelta(minutes=5),
                 require_receipts: bool = True,
                 clock: Clock = system_clock, timeout: float = 300.0,
                 http: httpx.Client | None = None, collateral: Collateral | None = None,
                 retry_failed_after: timedelta = timedelta(seconds=30),
                 tls: ssl.SSLContext | None = None,
                 outer_headers: Mapping[str, str] | None = None) -> None:
        self._url = url.rstrip("/")
        # Headers outside the encapsulation on every request (a replica's routing header for
        # the balancer, client/replicas.py): seen by the operator, so never anything secret.
        self._outer = dict(outer_headers or {})
        self._policy = policy
        self._collateral = collateral
        self._retry_failed_after = retry_failed_after
        # A failed re-attestation (continuous trust): (code, detail, when). While set, no
        # request goes to the enclave (client.reattestation_failed) until one passes again.
        self._failure: tuple[str, str, datetime] | None = None
        self._sim_roots = frozenset(r.lower().replace(":", "") for r in sim_roots)
        self._trusted_roots = trusted_roots
        self._reattest_after = reattest_after
        self._require_receipts = require_receipts
        self._clock = clock
        self._own_http = http is None
        self._timeout = timeout
        # One TLS context (loading the CA store takes tens of ms), shared by every client;
        # ``tls``: the proxy's mutual TLS context in a mesh (mesh/tls.py).
        self._tls = tls if tls is not None else (
            httpx.create_ssl_context() if http is None else None)
        self._http = http or _client(timeout, self._tls)
        self._lock = threading.Lock()
        self._enclave: VerifiedEnclave | None = None

    @property
    def enclave(self) -> VerifiedEnclave | None:
        """The last verified attestation, if any."""
        return self._enclave

    # --- attestation ---------------------------------------------------------------------------

    def attest(self) -> VerifiedEnclave:
        """A fresh nonce, the enclave's evidence for it, verified and appraised; then pinned."""
        with self._lock:
            return self._attest_locked()

    def _attest_locked(self) -> VerifiedEnclave:
        """Attest; a failure after an enclave was once verified stops every request to it
        at once (fail closed: ``client.reattestation_failed``, until an attestation passes
        again) and is kept for ``/medclave/status``."""
        again = self._enclave is not None or self._failure is not None
        try:
            enclave = self._attest_once()
        except MedclaveError as exc:
            if not again:
                raise
            self._enclave = None
            self._failure = (exc.code, exc.detail, self._clock())
            log.error("re-attestation of %s failed: %s; requests to it are refused until it "
                      "passes again", self._url, exc.code)
            raise  # this caller learns the cause; later ones client.reattestation_failed
        if self._failure is not None:
            log.warning("re-attestation of %s passes again", self._url)
        self._failure = None
        return enclave

    def _attest_once(self) -> VerifiedEnclave:
        nonce = os.urandom(NONCE_BYTES)
        issued = self._clock()
        try:
            response = self._http.get(f"{self._url}{proto.ATTESTATION_PATH}",
                                      params={"nonce": nonce.hex()}, headers=self._outer)
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc
        if response.status_code != 200:
            raise _answer_error(response, response.content)
        enclave = verify_enclave(response.content, nonce=nonce, policy=self._policy,
                                 now=self._clock(), nonce_issued=issued,
                                 sim_roots=self._sim_roots, trusted_roots=self._trusted_roots,
                                 collateral=self._collateral)
        previous = self._enclave
        if previous is not None and previous.key_config != enclave.key_config:
            log.info("enclave key changed (id %d -> %d); taken from a verified attestation",
                     previous.key_config.key_id, enclave.key_config.key_id)
        self._enclave = enclave
        return enclave

    def update_trust(self, *, policy: AppraisalPolicy | None = None,
                     collateral: Collateral | None = None) -> VerifiedEnclave:
        """New verifier inputs (a changed policy or collateral) take effect now: the enclave is
        attested again under them, and refused at once if it no longer passes."""
        with self._lock:
            if policy is not None:
                self._policy = policy
            if collateral is not None:
                self._collateral = collateral
            return self._attest_locked()

    def fail(self, code: str, detail: str) -> None:
        """Stop requests now (e.g. the relying party's own inputs no longer load)."""
        with self._lock:
            self._enclave = None
            self._failure = (code, detail, self._clock())

    def reattest_if_due(self) -> VerifiedEnclave | None:
        """The scheduled re-attestation: attest when the last one is ``reattest_after`` old
        (a failed one: ``retry_failed_after``); never the first attestation (that is lazy)."""
        with self._lock:
            now = self._clock()
            if self._enclave is not None:
                if now - self._enclave.verified_at < self._reattest_after:
                    return self._enclave
            elif self._failure is None or now - self._failure[2] < self._retry_failed_after:
                return None
            return self._attest_locked()

    def trust_state(self) -> dict[str, Any]:
        """What ``/medclave/status`` says about trust: verified, failed (and why) or not yet."""
        with self._lock:
            if self._failure is not None:
                code, detail, at = self._failure
                return {"state": "failed", "code": code, "detail": detail,
                        "since": at.isoformat()}
            if self._enclave is not None:
                return {"state": "verified", "verified_at": self._enclave.verified_at.isoformat()}
            return {"state": "unverified"}

    def current(self) -> VerifiedEnclave:
        """The pinned enclave, attested anew when none is or it is older than the re-attestation
        interval (the proxy's readiness check)."""
        return self._current()

    def _current(self, *, force: bool = False) -> VerifiedEnclave:
        with self._lock:
            failure = self._failure
            if (failure is not None and not force
                    and self._clock() - failure[2] < self._retry_failed_after):
                raise ClientError("client.reattestation_failed", f"{failure[0]}: {failure[1]}")
            enclave = self._enclave
            stale = enclave is None or self._clock() - enclave.verified_at >= self._reattest_after
            if force or stale:
                return self._attest_locked()
            assert enclave is not None
            return enclave

    # --- requests ------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: bytes = b"",
                authorization: str | None = None, dpop: str | None = None,
                abort: Abort | None = None, headers: tuple[tuple[str, str], ...] = ()
                ) -> InnerResponse:
        """One encapsulated request and its decapsulated answer (not streamed); ``dpop``: a
        proof for the inner URL, for a DPoP-bound token (RFC 9449 §7.1); ``abort``: lets another
        thread drop the request while the enclave works on it; ``headers``: more inner headers
        (a sealed conversation's share), encapsulated like the rest."""
        inner = _inner(method, path, body, authorization, dpop, headers)
        enclave = self._current()
        try:
            return self._send(enclave, inner, abort)
        except CryptoError as exc:
            if not key_refused(exc):
                raise
        return self._send(self._current(force=True), inner, abort)

    def _send(self, enclave: VerifiedEnclave, inner: bytes, abort: Abort | None = None
              ) -> InnerResponse:
        wire, context = encapsulate_request(enclave.key_config, inner)
        url = f"{self._url}{proto.OHTTP_PATH}"
        # The request id (and trace context) of the proxy request being served, if any, so
        # the enclave's log lines and spans join it; outside the encapsulation, like the
        # content type: a random id, nothing of the request.
        headers = {"content-type": proto.OHTTP_REQUEST, **outgoing_headers(), **self._outer}
        try:
            if abort is not None and self._own_http:
                # A connection of its own, so that dropping it drops this request only (a
                # pooled one is not ours to shut down, and its socket is not known up front).
                with _client(self._timeout, self._tls) as http:
                    response = http.post(url, content=wire, headers=headers,
                                         extensions={"trace": abort.trace})
            else:
                response = self._http.post(url, content=wire, headers=headers)
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc
        if response.status_code != 200:
            raise _answer_error(response, response.content)
        if response.headers.get("content-type", "").split(";")[0] != proto.OHTTP_RESPONSE:
            raise ClientError("client.upstream_failed", "the answer is not message/ohttp-res")
        plain = context.decapsulate_response(response.content, max_size=MAX_RESPONSE_BYTES)
        answer = bhttp.decode_response(plain, proto_limits())
        receipt = self.check_receipt(enclave, answer.header(proto.RECEIPT_HEADER),
                                     answer.header(proto.REQUEST_ID_HEADER),
                                     required=answer.status == 200 and _needs_receipt(inner))
        return InnerResponse(answer.status, answer.headers, answer.content, receipt)

    def stream(self, method: str, path: str, *, body: bytes = b"",
               authorization: str | None = None, dpop: str | None = None,
               headers: tuple[tuple[str, str], ...] = ()) -> StreamedResponse:
        """A chunked-OHTTP request; the answer streams back as it is generated."""
        inner = _inner(method, path, body, authorization, dpop, headers)
        try:
            return self._open_stream(self._current(), inner)
        except CryptoError as exc:
            if not key_refused(exc):
                raise
        return self._open_stream(self._current(force=True), inner)

    def upload(self, path: str, *, body: bytes, content_type: str,
               authorization: str | None = None, dpop: str | None = None,
               audio: bool = False) -> InnerResponse:
        """``POST`` a large body (audio) in chunked OHTTP and read the whole answer. ``audio``:
        refuse (``client.attestation_refused``) unless the verified runtime states that the
        enclave keeps none of it (``audio_retention: none``), before a byte is sent."""
        inner = _inner("POST", path, body, authorization, dpop, content_type=content_type)
        for attempt in (0, 1):
            enclave = self._current(force=attempt == 1)
            if audio and enclave.runtime.audio_retention != "none":
                raise ClientError("client.attestation_refused", "the enclave does not state "
                                  "audio_retention: none; no audio was sent")
            try:
                stream = self._open_stream(enclave, inner)
            except CryptoError as exc:
                if not key_refused(exc) or attempt == 1:
                    raise
                continue
            with stream:
                content = b"".join(stream.iter_content())
            return InnerResponse(stream.status, stream.headers, content, stream.receipt)
        raise AssertionError("unreachable")

    def _open_stream(self, enclave: VerifiedEnclave, inner: bytes) -> StreamedResponse:
        encoder = ChunkedRequestEncoder(enclave.key_config)
        wire = encoder.final(inner)
        # A stream gets a client of its own: an abandoned stream is finalised by the garbage
        # collector in whatever thread runs it, and httpcore then takes its pool's lock, which a
        # shared pool's thread may already hold (a self-deadlock). A private pool is never busy.
        http = _client(self._timeout, self._tls) if self._own_http else self._http
        request = http.build_request("POST", f"{self._url}{proto.OHTTP_PATH}", content=wire,
                                     headers={"content-type": proto.CHUNKED_REQUEST,
                                              **outgoing_headers(), **self._outer})
        try:
            response = http.send(request, stream=True)
        except httpx.HTTPError as exc:
            if http is not self._http:
                http.close()
            raise _unreachable(exc) from exc
        closer = http.close if http is not self._http else None
        if response.status_code != 200:
            body = response.read()
            response.close()
            if closer:
                closer()
            raise _answer_error(response, body)
        if response.headers.get("content-type", "").split(";")[0] != proto.CHUNKED_RESPONSE:
            response.close()
            if closer:
                closer()
            raise ClientError("client.upstream_failed", "the answer is not chunked OHTTP")
        return StreamedResponse(self, enclave, response, encoder, on_close=closer)

    # --- receipts ------------------------------------------------------------------------------

    def check_receipt(self, enclave: VerifiedEnclave, header: str | None,
                      request_id: str | None, *, required: bool = True
                      ) -> VerifiedReceipt | None:
        """The audit receipt, verified with the audit key the attestation bound, and naming
        this request, this model and this engine build."""
        if header is None:
            if required and self._require_receipts:
                raise AuditError("audit.receipt_invalid", "the answer carries no audit receipt")
            return None
        verified = verify_receipt(proto.decode_receipt_header(header), enclave.audit_verifier())
        entry = verified.entry
        if (entry.request_id != request_id or entry.model_digest != enclave.model_digest
                or entry.engine_build != enclave.runtime.engine_build):
            raise AuditError("audit.receipt_invalid",
                             "the receipt is for another request, model or engine build")
        return verified

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> EnclaveSession:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _inner(method: str, path: str, body: bytes, authorization: str | None,
           dpop: str | None, headers: tuple[tuple[str, str], ...] = (),
           content_type: str = "application/json") -> bytes:
    extra = ((("dpop", dpop),) if dpop is not None else ()) + headers
    return proto.encode_inner_request(method, path, body=body, authorization=authorization,
                                      extra_headers=extra, content_type=content_type)


def _needs_receipt(inner: bytes) -> bool:
    """Inferences carry receipts; listing models and managing conversations do not."""
    try:
        request = bhttp.decode_request(inner)
    except MedclaveError:
        return True
    return proto.needs_receipt(request.method.upper(), request.path.split("?", 1)[0])


def summary(enclave: VerifiedEnclave | None) -> Mapping[str, Any]:
    return {} if enclave is None else enclave.summary()
