"""QUIC variable-length integers (RFC 9000 §16), shared by Binary HTTP and chunked OHTTP.

The two most significant bits of the first byte give the length (1, 2, 4 or 8 bytes); the
remaining bits are the value in network byte order. Decoders accept non-minimal encodings,
as RFC 9292 §3 and draft-ietf-ohai-chunked-ohttp §6 both allow.
"""

from __future__ import annotations

from medclave.errors import CryptoError

MAX_VARINT = (1 << 62) - 1


def encode_varint(value: int) -> bytes:
    """Minimal encoding of ``value`` (0 .. 2^62-1)."""
    if value < 0 or value > MAX_VARINT:
        raise CryptoError("protocol.bad_message", f"integer {value} does not fit a QUIC varint")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def varint_length(first_byte: int) -> int:
    """Bytes taken by the varint that starts with ``first_byte``."""
    return 1 << (first_byte >> 6)


def decode_varint(data: bytes | bytearray | memoryview, offset: int) -> tuple[int, int]:
    """``(value, next_offset)``; raises ``protocol.bad_message`` if ``data`` ends inside it."""
    if offset >= len(data):
        raise CryptoError("protocol.bad_message", "message ends where an integer was expected")
    size = varint_length(data[offset])
    end = offset + size
    if end > len(data):
        raise CryptoError("protocol.bad_message", "message ends inside an integer")
    value = int.from_bytes(data[offset:end], "big") & ((1 << (8 * size - 2)) - 1)
    return value, end
