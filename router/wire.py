"""Just enough of the protobuf wire format to read a frame_id without parsing a whole frame.

The router forwards frames as raw bytes; for stream replay it only needs each message's frame_id
(DetectRequest field 3, DetectResponse field 1, both uint64 varints). Scanning the top-level fields
skips the image bytes instead of copying them into a message object.
"""

from __future__ import annotations

REQUEST_FRAME_ID = 3
RESPONSE_FRAME_ID = 1


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def frame_id(buf: bytes, field: int) -> int:
    """The value of varint field `field` (the last one wins, as in protobuf); 0 when absent."""
    pos, found = 0, 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _varint(buf, pos)
            if number == field:
                found = value
        elif kind == 2:
            length, pos = _varint(buf, pos)
            pos += length
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {kind}")
        if number == 0:
            raise WireError("field number 0")
    if pos != end:
        raise WireError("field runs past the end of the message")
    return found
