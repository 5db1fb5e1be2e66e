"""Protocol Buffers' wire format, the little of it the data path reads by hand (pure).

The worker finds a large image in a request without copying it (detector/requestview.py); the
router parses a large request without its image (router/wire.py) and writes its defaults as fields
(router/requestpolicy.py). Whatever this scan does not take (a group, a truncated field, too many
fields) raises ValueError, and the caller leaves the bytes to protobuf for its own verdict.
"""

from __future__ import annotations

LEN, VARINT, I64, I32 = 2, 0, 1, 5   # the wire types a DetectRequest uses
# Fields scanned in Python, at most: a request of a million tiny fields is left to protobuf's C parser
# (a real one has a dozen, or a few hundred class names).
MAX_FIELDS = 512


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at data[pos:end]: (value, position after it); ValueError if truncated or overlong."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def fields(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(field, wire type, field start, value start, value end) of each field in data[start:end]."""
    out = []
    pos = start
    while pos < end:
        field_start = pos
        key, pos = read_varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == LEN:
            length, pos = read_varint(data, pos, end)
            value_start, pos = pos, pos + length
        elif wire == VARINT:
            value_start = pos
            _, pos = read_varint(data, pos, end)
        elif wire == I64:
            value_start, pos = pos, pos + 8
        elif wire == I32:
            value_start, pos = pos, pos + 4
        else:
            raise ValueError("unexpected wire type")
        if pos > end or field == 0:
            raise ValueError("field runs past the message")
        out.append((field, wire, field_start, value_start, pos))
        if len(out) > MAX_FIELDS:
            raise ValueError("too many fields to scan")
    return out
