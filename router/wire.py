"""Reading a stream message's frame_id, and refusing a malformed one, without touching its image.

The router forwards frames as the bytes it received. For stream replay it needs each message's
frame_id, and a request the worker could not parse must be refused by the router itself: forwarded,
the worker would end its stream while the router is still writing to it, and gRPC then reports
INTERNAL ("Internal error from Core") instead of the worker's INVALID_ARGUMENT, about one time in
ten (found by the long fuzz pass). Parsing with protobuf (upb) validates exactly as the worker
does and costs about 1 us for a JPEG frame and 15 us for a 600 KB raw frame, less than a
hand-written scanner in Python. The parsed message is dropped; the original bytes go on.

A large message (LARGE_REQUEST_BYTES or more) is parsed without its image: protobuf copies a bytes
field out of the message it parses (9 ms for a 10 MB JPEG, on the router's event loop, which every
other client waits behind), and a bytes field's content is never validated. `_without_images` walks
the message's own fields (a few of them), keeps each as it is but empties the image's bytes
(`encoded`, `raw.data`) and unknown length-delimited fields, and protobuf parses what is left: the
same verdict, the same frame_id and settings. Anything the walk does not expect (a group, a
truncated field, an odd varint) goes to protobuf whole, for its own verdict.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.common.protowire import LEN, encode_varint, fields, read_varint


class WireError(ValueError):
    """Bytes that are not a well-formed message of the expected type."""


# From this size on, a request is parsed without its image's bytes (a walk of a few fields, ~10 us).
LARGE_REQUEST_BYTES = 64 * 1024
# DetectRequest's fields whose bytes are content, not structure: `encoded` (1), and within `raw` (2)
# a RawImage's `data` (1). Field numbers past the known ones are unknown fields: kept unparsed.
_REQUEST_ENCODED, _REQUEST_RAW, _REQUEST_LAST = 1, 2, 7
_RAW_DATA, _RAW_LAST = 1, 3


def parse_request(data: bytes) -> pb.DetectRequest:
    """A serialized DetectRequest, parsed (without its image's bytes when large); WireError if
    protobuf would not parse it."""
    if len(data) >= LARGE_REQUEST_BYTES:
        rest = _without_images(data, _REQUEST_ENCODED, _REQUEST_LAST, _REQUEST_RAW)
        if rest is not None:
            data = rest
    try:
        return pb.DetectRequest.FromString(data)
    except DecodeError as e:
        raise WireError(str(e) or "not a DetectRequest") from None


def _without_images(data: bytes, image: int, last_known: int, nested: int, start: int = 0,
                    end: int | None = None) -> bytes | None:
    """The message in data[start:end] with its `image` bytes field and unknown length-delimited
    fields emptied, its `nested` RawImage (0: none) treated the same way, every other field as it
    was; None at anything unexpected (protobuf then judges)."""
    end = len(data) if end is None else end
    try:
        found = fields(data, start, end)
    except ValueError:
        return None
    out: list[bytes] = []
    for number, wire, field_start, value_start, value_end in found:
        key, key_end = read_varint(data, field_start, end)
        if key_end - field_start > 5 or key > 0xFFFFFFFF:
            return None  # protobuf reads a tag in at most 5 bytes: its verdict
        if wire != LEN:
            out.append(data[field_start:value_end])
        elif value_start - key_end > 5 or value_end - value_start > 0x7FFFFFFF:
            return None
        elif number == image or number > last_known:
            out.append(data[field_start:key_end] + b"\0")  # the tag, an empty body
        elif number == nested:
            inner = _without_images(data, _RAW_DATA, _RAW_LAST, 0, value_start, value_end)
            if inner is None:
                return None
            out.append(data[field_start:key_end] + encode_varint(len(inner)) + inner)
        else:
            out.append(data[field_start:value_end])
    return b"".join(out)


def request_frame_id(data: bytes) -> int:
    """The frame_id of a serialized DetectRequest; WireError if protobuf would not parse it."""
    return int(parse_request(data).frame_id)


def response_frame_id(data: bytes) -> tuple[int, bool]:
    """The frame_id of a serialized DetectResponse, and whether the worker said to try it elsewhere
    (its queue was full); WireError if protobuf would not parse it."""
    try:
        resp = pb.DetectResponse.FromString(data)
    except DecodeError as e:
        raise WireError(str(e) or "not a DetectResponse") from None
    return int(resp.frame_id), resp.error.retry_elsewhere
