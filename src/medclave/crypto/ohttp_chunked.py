"""Chunked Oblivious HTTP (draft-ietf-ohai-chunked-ohttp-08): streamed requests and answers.

Framing (§4, §5): after the request header and encapsulated key, or after the response nonce,
come chunks each prefixed by a QUIC varint length; a length of 0 marks the final chunk, which
runs to the end of the stream. Protection (§6): request chunks are sealed with the HPKE context
(its sequence number orders them), response chunks with AES-128-GCM under a key derived as in
RFC 9458 §4.4 (labels ``message/bhttp chunked request``/``response``), nonce = aead_nonce XOR
counter. The final chunk carries the AAD ``"final"``, so truncation is detected; reordered,
dropped or repeated chunks fail to authenticate.

The classes are incremental: encoders turn each ``write``/``final`` into bytes to send at once;
decoders take arbitrary slices of the stream in ``feed`` and return the plaintext chunks that are
complete. A message is complete only after ``close()`` (or ``feed(..., end=True)``) has
authenticated the final chunk (§7.1); a stream that ends without it raises ``crypto.truncated``.
Any failure is sticky: a decoder that has raised refuses everything after.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medclave.crypto import hpke
from medclave.crypto.ohttp import (
    HEADER_SIZE,
    RESPONSE_NONCE_SIZE,
    KeyConfig,
    OhttpKeyPair,
    _parse_header,
    _response_nonce,
    derive_response_keys,
    request_header,
    request_info,
)
from medclave.crypto.varint import encode_varint, varint_length
from medclave.errors import CryptoError, InputError, MedclaveError

REQUEST_MEDIA_TYPE = "message/ohttp-chunked-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-chunked-res"
REQUEST_LABEL = b"message/bhttp chunked request"
RESPONSE_LABEL = b"message/bhttp chunked response"
FINAL_AAD = b"final"

# §3: receivers MUST accept 2^14-byte chunks and senders SHOULD not exceed that.
SEND_CHUNK = 16 * 1024
DEFAULT_MAX_CHUNK = 1024 * 1024
_MAX_COUNTER = (1 << (8 * hpke.NN)) - 1  # §6.2: fewer than 256^Nn chunks


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


class _Framing:
    """Incremental parser of the chunk framing shared by requests and responses."""

    def __init__(self, prefix_size: int, max_chunk: int) -> None:
        self._buf = bytearray()
        self._prefix_size = prefix_size
        self._max_sealed = max_chunk + hpke.NT
        self.prefix: bytes | None = None
        self._final = False
        self._ended = False
        self._failed = False

    def feed(self, data: bytes) -> list[bytes]:
        """Complete non-final sealed chunks in ``data`` (and what was buffered before)."""
        if self._failed:
            raise CryptoError("protocol.bad_message", "the stream already failed")
        if self._ended:
            raise CryptoError("protocol.bad_message", "data after the end of the stream")
        self._buf += data
        if self._final:
            if len(self._buf) > self._max_sealed:
                self._fail(InputError("input.too_large", "final chunk exceeds the chunk limit"))
            return []
        if self.prefix is None:
            if len(self._buf) < self._prefix_size:
                return []
            self.prefix = bytes(self._buf[:self._prefix_size])
            del self._buf[:self._prefix_size]
        chunks: list[bytes] = []
        pos = 0
        buf = self._buf
        while pos < len(buf):
            end = pos + varint_length(buf[pos])
            if end > len(buf):
                break
            size = int.from_bytes(buf[pos:end], "big") & ((1 << (8 * (end - pos) - 2)) - 1)
            if size == 0:
                self._final = True
                pos = end
                break
            if size > self._max_sealed:
                self._fail(InputError("input.too_large", "chunk exceeds the chunk limit"))
            if size < hpke.NT:
                self._fail(CryptoError("crypto.decrypt_failed", "chunk shorter than its tag"))
            if end + size > len(buf):
                break
            chunks.append(bytes(buf[end:end + size]))
            pos = end + size
        del buf[:pos]
        if self._final and len(buf) > self._max_sealed:
            self._fail(InputError("input.too_large", "final chunk exceeds the chunk limit"))
        return chunks

    def finish(self) -> bytes:
        """The sealed final chunk, once the stream has ended; refuses a truncated stream."""
        if self._failed:
            raise CryptoError("protocol.bad_message", "the stream already failed")
        self._ended = True
        if not self._final:
            self._fail(CryptoError("crypto.truncated", "stream ended without its final chunk"))
        return bytes(self._buf)

    def _fail(self, error: MedclaveError) -> None:
        self._failed = True
        raise error

    def guard(self, error: MedclaveError) -> MedclaveError:
        self._failed = True
        return error


# ---------------------------------------------------------------------------------------------
# responses


class ChunkedResponseEncoder:
    """Gateway side of §6.2. The first output carries the response nonce."""

    def __init__(self, secret: bytes, enc: bytes, *, response_nonce: bytes | None = None,
                 chunk_size: int = SEND_CHUNK) -> None:
        nonce = _response_nonce(response_nonce)
        key, self._base = derive_response_keys(secret, enc, nonce)
        self._aead = AESGCM(key)
        self._pending = nonce
        self._counter = 0
        self._chunk_size = chunk_size
        self._closed = False

    def _seal(self, chunk: bytes, aad: bytes) -> bytes:
        if self._closed:
            raise CryptoError("protocol.bad_message", "the response was already finished")
        if self._counter > _MAX_COUNTER:
            raise CryptoError("protocol.bad_message", "too many chunks for one response")
        nonce = _xor_counter(self._base, self._counter)
        self._counter += 1
        return self._aead.encrypt(nonce, bytes(chunk), aad)

    def _take_pending(self) -> bytes:
        out, self._pending = self._pending, b""
        return out

    def write(self, chunk: bytes) -> bytes:
        """Non-final chunk(s) for ``chunk`` (split at ``chunk_size``)."""
        out = bytearray(self._take_pending())
        for piece in _split(bytes(chunk), self._chunk_size):
            sealed = self._seal(piece, b"")
            out += encode_varint(len(sealed)) + sealed
        return bytes(out)

    def final(self, chunk: bytes = b"") -> bytes:
        """The last bytes of the response: ``chunk`` sealed with the AAD "final"."""
        pieces = _split(bytes(chunk), self._chunk_size)
        out = bytearray(self.write(b"".join(pieces[:-1])) if len(pieces) > 1 else b"")
        out += self._take_pending()
        out += b"\x00" + self._seal(pieces[-1], FINAL_AAD)
        self._closed = True
        return bytes(out)


class ChunkedResponseDecoder:
    """Client side of §6.2: ``feed`` slices of the response, then ``close``."""

    def __init__(self, secret: bytes, enc: bytes, *, max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        self._secret = secret
        self._enc = enc
        self._framing = _Framing(RESPONSE_NONCE_SIZE, max_chunk)
        self._aead: AESGCM | None = None
        self._base = b""
        self._counter = 0

    def _open(self, sealed: bytes, aad: bytes) -> bytes:
        if self._aead is None:
            assert self._framing.prefix is not None
            key, self._base = derive_response_keys(self._secret, self._enc, self._framing.prefix)
            self._aead = AESGCM(key)
        if self._counter > _MAX_COUNTER:
            raise self._framing.guard(CryptoError("protocol.bad_message", "too many chunks"))
        nonce = _xor_counter(self._base, self._counter)
        self._counter += 1
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag as exc:
            raise self._framing.guard(CryptoError("crypto.decrypt_failed")) from exc

    def feed(self, data: bytes, *, end: bool = False) -> list[bytes]:
        out = [self._open(c, b"") for c in self._framing.feed(data)]
        if end:
            out.append(self._open(self._framing.finish(), FINAL_AAD))
        return out

    def close(self) -> list[bytes]:
        """Authenticate the final chunk; raises ``crypto.truncated`` if the stream was cut."""
        return self.feed(b"", end=True)


def _xor_counter(base: bytes, counter: int) -> bytes:
    # §6.2: chunk_nonce = aead_nonce XOR encode(Nn, counter)
    return (int.from_bytes(base, "big") ^ counter).to_bytes(len(base), "big")


# ---------------------------------------------------------------------------------------------
# requests


class ChunkedRequestEncoder:
    """Client side of §6.1. The first output carries the header and encapsulated key."""

    def __init__(self, config: KeyConfig, *, ephemeral_private_key: bytes | None = None,
                 chunk_size: int = SEND_CHUNK) -> None:
        if not config.supports():
            raise CryptoError("crypto.unsupported_suite",
                              "the key config does not offer X25519/HKDF-SHA256/AES-128-GCM")
        header = request_header(config.key_id)
        self._enc, self._ctx = hpke.sender_context(
            config.public_key, request_info(REQUEST_LABEL, header),
            ephemeral_private_key=ephemeral_private_key)
        self._secret = bytes(self._ctx.export(RESPONSE_LABEL, RESPONSE_NONCE_SIZE))
        self._pending = header + self._enc
        self._chunk_size = chunk_size
        self._closed = False

    def _take_pending(self) -> bytes:
        if self._closed:
            raise CryptoError("protocol.bad_message", "the request was already finished")
        out, self._pending = self._pending, b""
        return out

    def write(self, chunk: bytes) -> bytes:
        out = bytearray(self._take_pending())
        for piece in _split(bytes(chunk), self._chunk_size):
            sealed = hpke.context_seal(self._ctx, piece)
            out += encode_varint(len(sealed)) + sealed
        return bytes(out)

    def final(self, chunk: bytes = b"") -> bytes:
        pieces = _split(bytes(chunk), self._chunk_size)
        out = bytearray(self.write(b"".join(pieces[:-1])) if len(pieces) > 1 else b"")
        out += self._take_pending()
        out += b"\x00" + hpke.context_seal(self._ctx, pieces[-1], FINAL_AAD)
        self._closed = True
        return bytes(out)

    def response_decoder(self, *, max_chunk: int = DEFAULT_MAX_CHUNK) -> ChunkedResponseDecoder:
        return ChunkedResponseDecoder(self._secret, self._enc, max_chunk=max_chunk)


class ChunkedRequestDecoder:
    """Gateway side of §6.1: ``feed`` slices of the request, then ``close``.

    The header is checked as soon as its 7 bytes arrive, so an unknown key id or suite is refused
    before anything else is read.
    """

    def __init__(self, keys: Iterable[OhttpKeyPair], *,
                 max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        self._keys = {k.key_id: k for k in keys}
        self._framing = _Framing(HEADER_SIZE + hpke.NENC, max_chunk)
        self._ctx: Any = None
        self._enc = b""
        self._checked = False
        self._seen = bytearray()

    def _check_header(self, data: bytes) -> None:
        if not self._checked:
            self._seen += data[:HEADER_SIZE]
            if len(self._seen) >= HEADER_SIZE:
                try:
                    _parse_header(bytes(self._seen), [k.config for k in self._keys.values()])
                except CryptoError as exc:
                    raise self._framing.guard(exc) from None
                self._checked = True

    def _open_context(self) -> None:
        prefix = self._framing.prefix
        assert prefix is not None
        header, self._enc = prefix[:HEADER_SIZE], prefix[HEADER_SIZE:]
        try:
            self._ctx = hpke.recipient_context(self._keys[header[0]].private_key, self._enc,
                                               request_info(REQUEST_LABEL, header))
        except CryptoError as exc:
            raise self._framing.guard(exc) from None

    def _open(self, sealed: bytes, aad: bytes) -> bytes:
        try:
            return hpke.context_open(self._ctx, sealed, aad)
        except CryptoError as exc:
            raise self._framing.guard(exc) from None

    def feed(self, data: bytes, *, end: bool = False) -> list[bytes]:
        self._check_header(data)
        sealed = self._framing.feed(data)
        if self._ctx is None and self._framing.prefix is not None:
            self._open_context()
        out = [self._open(c, b"") for c in sealed]
        if end:
            final = self._framing.finish()
            out.append(self._open(final, FINAL_AAD))
        return out

    def close(self) -> list[bytes]:
        return self.feed(b"", end=True)

    def response_encoder(self, *, response_nonce: bytes | None = None,
                         chunk_size: int = SEND_CHUNK) -> ChunkedResponseEncoder:
        """Available once the header and encapsulated key have arrived (§6.2)."""
        if self._ctx is None:
            raise CryptoError("protocol.bad_message", "the request header has not arrived yet")
        secret = bytes(self._ctx.export(RESPONSE_LABEL, RESPONSE_NONCE_SIZE))
        return ChunkedResponseEncoder(secret, self._enc, response_nonce=response_nonce,
                                      chunk_size=chunk_size)
