"""A bounded reader for the protobuf wire format (https://protobuf.dev/programming-guides/encoding/).

go-tpm-tools' ``attest.Attestation`` is read with this rather than with the installed
``protobuf`` runtime: the runtime needs code generated from go-tpm-tools' ``.proto`` files (a
``protoc`` step and vendored schemas for four messages), and its parser bounds neither nesting
nor repeated fields for us. What the evidence needs is the wire format's two field kinds used
there, varints and length-delimited bytes; groups and fixed-width fields are refused, every
length is checked against what remains, and the counts are bounded.
"""

from __future__ import annotations

from collections.abc import Mapping

from medclave.errors import AttestationError

MAX_FIELDS = 4096
WIRE_VARINT, WIRE_LEN = 0, 2

Fields = Mapping[int, list[int | bytes]]


def _bad(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", f"protobuf: {detail}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    if pos < len(data) and data[pos] < 0x80:  # one byte: tags and short lengths, the usual case
        return data[pos], pos + 1
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise _bad("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise _bad("varint over 64 bits")
            return value, pos
    raise _bad("varint longer than 10 bytes")


def fields(data: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values in order (ints for varints, bytes for length-delimited)."""
    out: dict[int, list[int | bytes]] = {}
    pos, count = 0, 0
    while pos < len(data):
        count += 1
        if count > MAX_FIELDS:
            raise _bad(f"over {MAX_FIELDS} fields")
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if not 1 <= number < 1 << 29:
            raise _bad("field number out of range")
        if wire == WIRE_VARINT:
            value, pos = _varint(data, pos)
            out.setdefault(number, []).append(value)
        elif wire == WIRE_LEN:
            length, pos = _varint(data, pos)
            if length > len(data) - pos:
                raise _bad(f"field {number} runs past the message")
            out.setdefault(number, []).append(data[pos : pos + length])
            pos += length
        else:
            raise _bad(f"wire type {wire} is not used by this message")
    return out


def one_bytes(msg: Fields, number: int, *, required: bool = False) -> bytes:
    values = msg.get(number, [])
    if len(values) > 1:
        raise _bad(f"field {number} repeated")
    if not values:
        if required:
            raise _bad(f"field {number} missing")
        return b""
    value = values[0]
    if not isinstance(value, bytes):
        raise _bad(f"field {number} is not length-delimited")
    return value


def one_int(msg: Fields, number: int) -> int:
    values = msg.get(number, [])
    if len(values) > 1 or (values and not isinstance(values[0], int)):
        raise _bad(f"field {number} is not one varint")
    return int(values[0]) if values else 0


def repeated_bytes(msg: Fields, number: int, *, maximum: int) -> list[bytes]:
    values = msg.get(number, [])
    if len(values) > maximum or not all(isinstance(v, bytes) for v in values):
        raise _bad(f"field {number}: over {maximum} entries or not length-delimited")
    return [v for v in values if isinstance(v, bytes)]
