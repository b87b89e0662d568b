"""Incremental decoding of a binary HTTP response (RFC 9292) as its bytes arrive.

A streamed answer arrives as chunked OHTTP plaintext (draft-ietf-ohai-chunked-ohttp) whose
boundaries need not align with the message's parts. :class:`ResponseStreamDecoder` takes those
bytes in any slicing, exposes the head (informational responses, status, header fields) once it
is complete, and hands content out as soon as it arrives, so a client can forward tokens without
waiting for the end. The rules and bounds are those of :mod:`medclave.crypto.bhttp`; ``close``
refuses a message cut anywhere RFC 9292 §3.8 does not allow.
"""

from __future__ import annotations

from enum import Enum

from medclave.crypto.bhttp import (
    DEFAULT_LIMITS,
    INDETERMINATE_RESPONSE,
    KNOWN_RESPONSE,
    Fields,
    Incomplete,
    Limits,
    Reader,
    Response,
    _read_informational,
)
from medclave.errors import CryptoError, InputError


class _State(Enum):
    HEAD = 1
    CONTENT = 2
    TRAILERS = 3
    DONE = 4


def _bad(detail: str) -> CryptoError:
    return CryptoError("protocol.bad_message", f"binary HTTP: {detail}")


class ResponseStreamDecoder:
    """``feed`` bytes, get content pieces; ``head`` and ``trailers`` appear when complete."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._state = _State.HEAD
        self._indeterminate = False
        self._remaining = 0  # bytes left in the current content chunk (or known-length content)
        self._in_chunk = False
        self._content_started = False
        self._total = 0
        self._head_limit = (limits.max_informational + 1) * (limits.max_field_section + 16) + 64
        self.head: Response | None = None
        self.trailers: Fields = ()

    @property
    def complete(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes) -> list[bytes]:
        self._total += len(data)
        if self._total > self._limits.max_message:
            raise InputError("input.too_large", "binary HTTP message exceeds the size limit")
        self._buf += data
        out: list[bytes] = []
        while self._step(out):
            pass
        return out

    def close(self) -> Response:
        """End of input: the head and trailers (content was returned by ``feed``)."""
        if self._state is _State.HEAD:
            self._finish_head_truncated()
        elif self._state is _State.CONTENT:
            # §3.8: the content may be omitted as a whole, not cut once it has begun.
            if self._in_chunk or self._buf or self._content_started:
                raise _bad("message is truncated inside its content")
        elif self._state is _State.TRAILERS and self._buf:
            raise _bad("message is truncated inside its trailers")
        self._state = _State.DONE
        assert self.head is not None
        return Response(self.head.status, self.head.headers, b"", self.head.informational,
                        self.trailers)

    # -- one step of progress; False when more input is needed ------------------------------

    def _step(self, out: list[bytes]) -> bool:
        if self._state is _State.HEAD:
            return self._step_head()
        if self._state is _State.CONTENT:
            return self._step_content(out)
        if self._state is _State.TRAILERS:
            return self._step_trailers()
        if self._buf.strip(b"\x00"):
            raise _bad("non-zero bytes after the message (padding must be zero)")
        self._buf.clear()
        return False

    def _step_head(self) -> bool:
        reader = Reader(bytes(self._buf), self._limits)
        try:
            framing = reader.varint()
            if framing not in (KNOWN_RESPONSE, INDETERMINATE_RESPONSE):
                raise _bad(f"framing indicator {framing} is not a response")
            self._indeterminate = framing == INDETERMINATE_RESPONSE
            status, informational = _read_informational(reader, self._indeterminate)
            if reader.at_end():
                raise Incomplete  # the header section may follow, or the message may end here
            headers = reader.section(self._indeterminate)
        except Incomplete:
            if len(self._buf) > self._head_limit:
                raise InputError("input.too_large", "binary HTTP head too large") from None
            return False
        self.head = Response(status, headers, b"", informational)
        del self._buf[:reader.pos]
        self._state = _State.CONTENT
        return True

    def _finish_head_truncated(self) -> None:
        reader = Reader(bytes(self._buf), self._limits)
        try:
            framing = reader.varint()
            if framing not in (KNOWN_RESPONSE, INDETERMINATE_RESPONSE):
                raise _bad(f"framing indicator {framing} is not a response")
            status, informational = _read_informational(reader, framing == INDETERMINATE_RESPONSE)
        except Incomplete:
            raise _bad("message is truncated before its final status") from None
        if not reader.at_end():
            raise _bad("message is truncated inside its header section")
        self.head = Response(status, (), b"", informational)

    def _step_content(self, out: list[bytes]) -> bool:
        if not self._in_chunk:
            reader = Reader(bytes(self._buf[:8]), self._limits)
            try:
                size = reader.varint()
            except Incomplete:
                return False
            del self._buf[:reader.pos]
            self._content_started = True
            if self._indeterminate and size == 0:
                self._state = _State.TRAILERS
                return True
            self._remaining, self._in_chunk = size, True
        if self._remaining and self._buf:
            piece = bytes(self._buf[:self._remaining])
            del self._buf[:len(piece)]
            self._remaining -= len(piece)
            out.append(piece)
        if self._remaining:
            return False
        self._in_chunk = False
        if not self._indeterminate:
            self._state = _State.TRAILERS
        return True

    def _step_trailers(self) -> bool:
        if not self._buf:
            return False
        reader = Reader(bytes(self._buf), self._limits)
        try:
            self.trailers = reader.section(self._indeterminate)
        except Incomplete:
            if len(self._buf) > self._limits.max_field_section + 16:
                raise InputError("input.too_large", "binary HTTP trailers too large") from None
            return False
        del self._buf[:reader.pos]
        self._state = _State.DONE
        return True
