"""Binary HTTP messages (RFC 9292): the plaintext inside every OHTTP encapsulation.

Both framings are supported for requests and responses: known-length (framing indicators 0 and
1, §3.1) and indeterminate-length (2 and 3, §3.2), with informational responses (§3.5.1),
trailers, truncation of empty trailing parts and zero padding (§3.8).

Parsing is strict (§4, §8): every length is checked against what remains, sizes and field counts
are bounded by :class:`Limits`, field names must be lowercase HTTP tokens (so pseudo-fields, which
start with ``:``, are refused), field values must satisfy RFC 9113 §8.2.1, padding must be zero.
Anything else raises :class:`~medclave.errors.CryptoError` ``protocol.bad_message`` or
:class:`~medclave.errors.InputError` ``input.too_large``; nothing else escapes.

Field names and values are ``str`` decoded as Latin-1, which maps every byte to one code point
and back, so ``obs-text`` bytes survive a round trip unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from medclave.crypto.varint import encode_varint, varint_length
from medclave.errors import CryptoError, InputError

MEDIA_TYPE = "message/bhttp"

KNOWN_REQUEST = 0
KNOWN_RESPONSE = 1
INDETERMINATE_REQUEST = 2
INDETERMINATE_RESPONSE = 3

Field = tuple[str, str]
Fields = tuple[Field, ...]

# RFC 9110 §5.6.2 tchar, lowercase only (RFC 9113 §8.2.1 forbids uppercase names).
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_METHOD_CHARS = _TCHAR | frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SCHEME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")
_VISIBLE = frozenset(range(0x21, 0x7F))
_AUTHORITY_CHARS = _VISIBLE - frozenset(b"/?#@")
_VALUE_FORBIDDEN = frozenset(b"\x00\r\n")
_OWS = frozenset(b" \t")


@dataclass(frozen=True)
class Limits:
    """Bounds on what a decoder accepts (RFC 9292 §8: resource exhaustion)."""

    max_message: int = 16 * 1024 * 1024
    max_fields: int = 256
    max_field_section: int = 64 * 1024
    max_informational: int = 8


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Request:
    method: str
    scheme: str
    authority: str
    path: str
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()

    def encode(self, *, indeterminate: bool = False, truncate: bool = False,
               padding: int = 0) -> bytes:
        return encode_request(self, indeterminate=indeterminate, truncate=truncate,
                              padding=padding)

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request:
        return decode_request(data, limits)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _first(self.headers, name)


@dataclass(frozen=True)
class InformationalResponse:
    status: int
    headers: Fields = ()


@dataclass(frozen=True)
class Response:
    status: int
    headers: Fields = ()
    content: bytes = b""
    informational: tuple[InformationalResponse, ...] = ()
    trailers: Fields = ()

    def encode(self, *, indeterminate: bool = False, truncate: bool = False,
               padding: int = 0) -> bytes:
        return encode_response(self, indeterminate=indeterminate, truncate=truncate,
                               padding=padding)

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Response:
        return decode_response(data, limits)

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


def _first(fields: Fields, name: str) -> str | None:
    wanted = name.lower()
    return next((v for n, v in fields if n == wanted), None)


def _bad(detail: str) -> CryptoError:
    return CryptoError("protocol.bad_message", f"binary HTTP: {detail}")


# ---------------------------------------------------------------------------------------------
# validation shared by encoder and decoder


def _check_name(name: bytes) -> None:
    if not name or not _TCHAR.issuperset(name):
        raise _bad("field name is not a lowercase token (pseudo-fields are not accepted)")


def _check_value(value: bytes) -> None:
    # RFC 9113 §8.2.1, which RFC 9292 §3.6 makes binding on recipients.
    if _VALUE_FORBIDDEN.intersection(value):
        raise _bad("field value contains NUL, CR or LF")
    if value and (value[0] in _OWS or value[-1] in _OWS):
        raise _bad("field value starts or ends with whitespace")


def _check_control(method: bytes, scheme: bytes, authority: bytes, path: bytes) -> None:
    # RFC 9292 §3.4 defers to the RFC 9113 §8.3.1 rules for the pseudo-header fields.
    if not method or not _METHOD_CHARS.issuperset(method):
        raise _bad("method is not a token")
    if not scheme or not scheme[:1].isalpha() or not _SCHEME_CHARS.issuperset(scheme):
        raise _bad("scheme is invalid")
    if not _AUTHORITY_CHARS.issuperset(authority):
        raise _bad("authority is invalid (userinfo, whitespace or a delimiter)")
    if not _VISIBLE.issuperset(path):
        raise _bad("path contains whitespace or a control character")
    if not path and scheme.lower() in (b"http", b"https"):
        raise _bad("path is empty for an http(s) request")


def _check_status(status: int, *, final: bool) -> None:
    low, high = (200, 599) if final else (100, 199)
    if not low <= status <= high:
        kind = "final" if final else "informational"
        raise _bad(f"status {status} is not a valid {kind} status")


# ---------------------------------------------------------------------------------------------
# encoding


def _latin1(text: str, what: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise _bad(f"{what} has a character outside Latin-1") from None


def _lp(data: bytes) -> bytes:
    return encode_varint(len(data)) + data


def _field_lines(fields: Iterable[Field]) -> bytes:
    out = bytearray()
    for name, value in fields:
        raw_name = _latin1(name.lower(), "field name")
        raw_value = _latin1(value, "field value")
        _check_name(raw_name)
        _check_value(raw_value)
        out += _lp(raw_name)
        out += _lp(raw_value)
    return bytes(out)


def _section(fields: Iterable[Field], indeterminate: bool) -> bytes:
    lines = _field_lines(fields)
    return lines + b"\x00" if indeterminate else _lp(lines)


def _content(content: bytes, indeterminate: bool) -> bytes:
    if not indeterminate:
        return _lp(content)
    return (_lp(content) if content else b"") + b"\x00"


def _assemble(head: bytes, headers: Fields, content: bytes, trailers: Fields, *,
              indeterminate: bool, truncate: bool, padding: int) -> bytes:
    parts = [_section(headers, indeterminate), _content(content, indeterminate),
             _section(trailers, indeterminate)]
    if truncate:
        # §3.8: empty trailers may be omitted, then empty content, then an empty header section.
        for empty in (not trailers, not content, not headers):
            if not empty:
                break
            parts.pop()
    if padding < 0:
        raise _bad("padding is negative")
    return head + b"".join(parts) + bytes(padding)


def encode_request(request: Request, *, indeterminate: bool = False, truncate: bool = False,
                   padding: int = 0) -> bytes:
    """RFC 9292 §3.1/§3.2 encoding; ``truncate`` omits empty trailing parts (§3.8)."""
    method = _latin1(request.method, "method")
    scheme = _latin1(request.scheme, "scheme")
    authority = _latin1(request.authority, "authority")
    path = _latin1(request.path, "path")
    _check_control(method, scheme, authority, path)
    framing = INDETERMINATE_REQUEST if indeterminate else KNOWN_REQUEST
    head = encode_varint(framing) + _lp(method) + _lp(scheme) + _lp(authority) + _lp(path)
    return _assemble(head, request.headers, request.content, request.trailers,
                     indeterminate=indeterminate, truncate=truncate, padding=padding)


def encode_response(response: Response, *, indeterminate: bool = False, truncate: bool = False,
                    padding: int = 0) -> bytes:
    framing = INDETERMINATE_RESPONSE if indeterminate else KNOWN_RESPONSE
    return _assemble(response_head(response.status, response.headers, response.informational,
                                   framing=framing, with_headers=False),
                     response.headers, response.content, response.trailers,
                     indeterminate=indeterminate, truncate=truncate, padding=padding)


def response_head(status: int, headers: Fields = (),
                  informational: Iterable[InformationalResponse] = (), *,
                  framing: int = INDETERMINATE_RESPONSE, with_headers: bool = True) -> bytes:
    """Framing indicator, informational responses, final status (and header section).

    With the streaming helpers below this lets a server emit a response as it is generated:
    ``response_head(...)``, then ``content_chunk(...)`` any number of times, then
    ``response_end(...)``.
    """
    if framing not in (KNOWN_RESPONSE, INDETERMINATE_RESPONSE):
        raise _bad("framing indicator is not a response")
    indeterminate = framing == INDETERMINATE_RESPONSE
    out = bytearray(encode_varint(framing))
    for info in informational:
        _check_status(info.status, final=False)
        out += encode_varint(info.status)
        out += _section(info.headers, indeterminate)
    _check_status(status, final=True)
    out += encode_varint(status)
    if with_headers:
        out += _section(headers, indeterminate)
    return bytes(out)


def content_chunk(data: bytes) -> bytes:
    """One indeterminate-length content chunk (§3.2); empty data yields nothing (a 0 ends it)."""
    return _lp(data) if data else b""


def response_end(trailers: Fields = ()) -> bytes:
    """Content terminator and trailer section of an indeterminate-length response."""
    return b"\x00" + _section(trailers, True)


# ---------------------------------------------------------------------------------------------
# decoding


class Incomplete(Exception):
    """The data ended early. Internal: streaming decoders wait for more; others refuse."""


class Reader:
    """A bounds-checked cursor over untrusted bytes."""

    __slots__ = ("data", "limits", "pos")

    def __init__(self, data: bytes, limits: Limits, pos: int = 0) -> None:
        self.data = data
        self.limits = limits
        self.pos = pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        if self.pos >= len(self.data):
            raise Incomplete
        end = self.pos + varint_length(self.data[self.pos])
        if end > len(self.data):
            raise Incomplete
        value = int.from_bytes(self.data[self.pos:end], "big")
        value &= (1 << (8 * (end - self.pos) - 2)) - 1
        self.pos = end
        return value

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise Incomplete
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def prefixed(self) -> bytes:
        size = self.varint()
        if size > self.limits.max_message:
            raise InputError("input.too_large", "binary HTTP: a length exceeds the message limit")
        return self.take(size)

    def field_line(self, name_size: int) -> tuple[bytes, bytes]:
        if name_size == 0:
            raise _bad("field name is empty")
        name = self.take(name_size)
        _check_name(name)
        value = self.prefixed()
        _check_value(value)
        return name, value

    def known_section(self) -> Fields:
        size = self.varint()
        if size > self.limits.max_field_section:
            raise InputError("input.too_large", "binary HTTP: field section too large")
        sub = Reader(self.take(size), self.limits)
        fields: list[Field] = []
        while not sub.at_end():
            try:
                name, value = sub.field_line(sub.varint())
            except Incomplete:
                raise _bad("field line overruns its section") from None
            fields.append(_field(name, value))
            self._check_count(fields)
        return tuple(fields)

    def indeterminate_section(self) -> Fields:
        start = self.pos
        fields: list[Field] = []
        while (name_size := self.varint()) != 0:
            name, value = self.field_line(name_size)
            fields.append(_field(name, value))
            self._check_count(fields)
            if self.pos - start > self.limits.max_field_section:
                raise InputError("input.too_large", "binary HTTP: field section too large")
        return tuple(fields)

    def section(self, indeterminate: bool) -> Fields:
        return self.indeterminate_section() if indeterminate else self.known_section()

    def content(self, indeterminate: bool) -> bytes:
        if not indeterminate:
            return self.prefixed()
        out = bytearray()
        while (size := self.varint()) != 0:
            if len(out) + size > self.limits.max_message:
                raise InputError("input.too_large", "binary HTTP: content too large")
            out += self.take(size)
        return bytes(out)

    def padding(self) -> None:
        if self.data[self.pos:].strip(b"\x00"):
            raise _bad("non-zero bytes after the message (padding must be zero)")
        self.pos = len(self.data)

    def _check_count(self, fields: list[Field]) -> None:
        if len(fields) > self.limits.max_fields:
            raise InputError("input.too_large", "binary HTTP: too many fields in a section")


def _field(name: bytes, value: bytes) -> Field:
    return name.decode("latin-1"), value.decode("latin-1")


def _framing(reader: Reader, allowed: tuple[int, int]) -> int:
    framing = reader.varint()
    if framing not in allowed:
        raise _bad(f"framing indicator {framing} is not one of {allowed}")
    return framing


def _read_informational(reader: Reader, indeterminate: bool
                        ) -> tuple[int, tuple[InformationalResponse, ...]]:
    informational: list[InformationalResponse] = []
    while True:
        status = reader.varint()
        if 200 <= status <= 599:
            return status, tuple(informational)
        _check_status(status, final=False)
        if len(informational) >= reader.limits.max_informational:
            raise InputError("input.too_large", "binary HTTP: too many informational responses")
        informational.append(InformationalResponse(status, reader.section(indeterminate)))


def _prepare(data: bytes | bytearray | memoryview, limits: Limits) -> Reader:
    if len(data) > limits.max_message:
        raise InputError("input.too_large", "binary HTTP message exceeds the size limit")
    return Reader(bytes(data), limits)


def decode_request(data: bytes | bytearray | memoryview,
                   limits: Limits = DEFAULT_LIMITS) -> Request:
    reader = _prepare(data, limits)
    try:
        indeterminate = _framing(reader, (KNOWN_REQUEST, INDETERMINATE_REQUEST)) != 0
        control = [reader.prefixed() for _ in range(4)]
        _check_control(*control)
        method, scheme, authority, path = (c.decode("latin-1") for c in control)
        headers, content, trailers = _tail(reader, indeterminate)
    except Incomplete:
        raise _bad("message is truncated inside a part") from None
    return Request(method, scheme, authority, path, headers, content, trailers)


def decode_response(data: bytes | bytearray | memoryview,
                    limits: Limits = DEFAULT_LIMITS) -> Response:
    reader = _prepare(data, limits)
    try:
        indeterminate = _framing(reader, (KNOWN_RESPONSE, INDETERMINATE_RESPONSE)) != 1
        status, informational = _read_informational(reader, indeterminate)
        headers, content, trailers = _tail(reader, indeterminate)
    except Incomplete:
        raise _bad("message is truncated inside a part") from None
    return Response(status, headers, content, informational, trailers)


def decode(data: bytes | bytearray | memoryview,
           limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Either kind, by its framing indicator (§3.3)."""
    try:
        framing = _prepare(data, limits).varint()
    except Incomplete:
        raise _bad("empty message") from None
    if framing in (KNOWN_RESPONSE, INDETERMINATE_RESPONSE):
        return decode_response(data, limits)
    return decode_request(data, limits)


def _tail(reader: Reader, indeterminate: bool) -> tuple[Fields, bytes, Fields]:
    # §3.8: the message may end before the header section, the content or the trailers,
    # which then count as empty; any other truncation is invalid.
    headers: Fields = ()
    content = b""
    trailers: Fields = ()
    if not reader.at_end():
        headers = reader.section(indeterminate)
        if not reader.at_end():
            content = reader.content(indeterminate)
            if not reader.at_end():
                trailers = reader.section(indeterminate)
                reader.padding()
    return headers, content, trailers
