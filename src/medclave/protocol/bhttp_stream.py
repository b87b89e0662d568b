"""Incremental decoding of a Binary HTTP response (RFC 9292) as its bytes arrive.

A streamed answer is an indeterminate-length response (§3.2): framing indicator 3, status, a
header section, content chunks each prefixed by its length, a zero length, then trailers. The
chunked OHTTP layer hands over plaintext in pieces that need not line up with those parts, so
this decoder buffers only the part it is in, hands out content chunks as soon as each is whole,
and keeps the same bounds and checks as :func:`medclave.crypto.bhttp.decode_response` (it parses
each part with the same :class:`~medclave.crypto.bhttp.Reader`). A known-length response (§3.1)
is accepted too and handed out at :meth:`close`.

Any failure raises ``protocol.bad_message`` or ``input.too_large`` and is sticky.
"""

from __future__ import annotations

from enum import Enum, auto

from medclave.crypto import bhttp
from medclave.crypto.varint import varint_length
from medclave.errors import CryptoError, InputError, MedclaveError


class _State(Enum):
    FRAMING = auto()
    STATUS = auto()
    HEADERS = auto()
    CONTENT = auto()
    TRAILERS = auto()
    DONE = auto()
    KNOWN = auto()  # a known-length response: buffered whole


def _bad(detail: str) -> CryptoError:
    return CryptoError("protocol.bad_message", f"binary HTTP stream: {detail}")


class ResponseStreamDecoder:
    """``feed(data) -> [content chunks]``; ``status``/``headers`` once they have arrived;
    ``close()`` checks the message ended where it may and returns any last content."""

    def __init__(self, limits: bhttp.Limits = bhttp.DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._state = _State.FRAMING
        self._failed = False
        self._informational = 0
        self._content_size = 0
        self._chunks_seen = 0
        self.status: int | None = None
        self.headers: bhttp.Fields = ()
        self.trailers: bhttp.Fields = ()

    @property
    def head_complete(self) -> bool:
        return self._state in (_State.CONTENT, _State.TRAILERS, _State.DONE)

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)

    def trailer(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.trailers if k == wanted), None)

    def feed(self, data: bytes) -> list[bytes]:
        if self._failed:
            raise _bad("the stream already failed")
        try:
            self._buf += data
            if self._state is _State.KNOWN:
                if len(self._buf) > self._limits.max_message:
                    raise InputError("input.too_large", "binary HTTP message exceeds the limit")
                return []
            return self._advance()
        except MedclaveError:
            self._failed = True
            raise

    def close(self) -> list[bytes]:
        """End of the message: the content of a known-length response, or nothing more."""
        if self._failed:
            raise _bad("the stream already failed")
        try:
            if self._state is _State.KNOWN:
                response = bhttp.decode_response(bytes(self._buf), self._limits)
                self.status, self.headers, self.trailers = (
                    response.status, response.headers, response.trailers)
                self._state = _State.DONE
                return [response.content] if response.content else []
            # §3.8: an indeterminate message may end before its header section, before its
            # content, or before its trailers; anywhere else it is truncated.
            allowed = (
                self._state is _State.DONE
                or (self._state is _State.HEADERS and not self._buf)
                or (self._state is _State.CONTENT and not self._buf and not self._chunks_seen)
                or (self._state is _State.TRAILERS and not self._buf)
            )
            if not allowed:
                raise _bad("message is truncated inside a part")
            self._state = _State.DONE
            return []
        except MedclaveError:
            self._failed = True
            raise

    # --- parsing --------------------------------------------------------------------------

    def _reader(self) -> bhttp.Reader:
        return bhttp.Reader(bytes(self._buf), self._limits)

    def _consume(self, reader: bhttp.Reader) -> None:
        del self._buf[:reader.pos]

    def _advance(self) -> list[bytes]:
        out: list[bytes] = []
        while self._buf:
            try:
                progressed = self._step(out)
            except bhttp.Incomplete:
                self._check_pending()
                break
            if not progressed:
                break
        return out

    def _check_pending(self) -> None:
        # A part still arriving may not grow past what the decoder would accept once whole.
        bound = {
            # An informational response (1xx) carries a header section too (RFC 9292 §3.5.1).
            _State.STATUS: self._limits.max_field_section + 16,
            _State.HEADERS: self._limits.max_field_section + 16,
            _State.TRAILERS: self._limits.max_field_section + 16,
            _State.CONTENT: self._limits.max_message + 16,
        }.get(self._state, 64)
        if len(self._buf) > bound:
            raise InputError("input.too_large", "binary HTTP part exceeds its limit")

    def _step(self, out: list[bytes]) -> bool:
        state = self._state
        if state is _State.FRAMING:
            reader = self._reader()
            framing = reader.varint()
            if framing == bhttp.KNOWN_RESPONSE:
                self._state = _State.KNOWN
                if len(self._buf) > self._limits.max_message:
                    raise InputError("input.too_large", "binary HTTP message exceeds the limit")
                return False
            if framing != bhttp.INDETERMINATE_RESPONSE:
                raise _bad(f"framing indicator {framing} is not a response")
            self._consume(reader)
            self._state = _State.STATUS
            return True
        if state is _State.STATUS:
            reader = self._reader()
            status = reader.varint()
            if 200 <= status <= 599:
                self.status = status
                self._consume(reader)
                self._state = _State.HEADERS
                return True
            if not 100 <= status <= 199:
                raise _bad(f"status {status} is not valid")
            if self._informational >= self._limits.max_informational:
                raise InputError("input.too_large", "too many informational responses")
            reader.indeterminate_section()  # informational headers: parsed, checked, dropped
            self._informational += 1
            self._consume(reader)
            return True
        if state is _State.HEADERS:
            reader = self._reader()
            self.headers = reader.indeterminate_section()
            self._consume(reader)
            self._state = _State.CONTENT
            return True
        if state is _State.CONTENT:
            return self._content(out)
        if state is _State.TRAILERS:
            reader = self._reader()
            self.trailers = reader.indeterminate_section()
            reader.padding()
            self._buf.clear()
            self._state = _State.DONE
            return False
        if state is _State.DONE:
            if bytes(self._buf).strip(b"\x00"):
                raise _bad("non-zero bytes after the message (padding must be zero)")
            self._buf.clear()
            return False
        raise _bad("unexpected state")  # pragma: no cover

    def _content(self, out: list[bytes]) -> bool:
        end = varint_length(self._buf[0])
        if end > len(self._buf):
            raise bhttp.Incomplete
        size = int.from_bytes(self._buf[:end], "big") & ((1 << (8 * end - 2)) - 1)
        if size == 0:
            del self._buf[:end]
            self._state = _State.TRAILERS
            return True
        if self._content_size + size > self._limits.max_message:
            raise InputError("input.too_large", "binary HTTP content exceeds the limit")
        if end + size > len(self._buf):
            raise bhttp.Incomplete
        out.append(bytes(self._buf[end:end + size]))
        del self._buf[:end + size]
        self._content_size += size
        self._chunks_seen += 1
        return True
