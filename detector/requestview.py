"""A DetectRequest whose image is a view of the bytes gRPC received, not a copy.

protobuf copies a bytes field twice on its way to the worker's code: into the parsed message, and
again into a new Python object each time the field is read. For a 12 MB image that is two 12 MB
copies on the event loop per request (about 10 ms each on this 2-core VM, most of it faulting in
fresh memory), while health answers wait. `parse` finds the image field in the wire bytes itself and
parses only the rest with protobuf: the image reaches the decoder as a memoryview of the request.

Only for large images (the scan and slices cost more than a copy of a small one), and only for a
message laid out simply (one image field; a raw image's pixels in one `data` field): anything else,
malformed bytes included, is parsed the ordinary way, so the outcome is always protobuf's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.names import DETECTOR_SERVICE
from eagleeye.common.protowire import LEN, fields

# Images at least this large take the view; smaller ones are copied as protobuf does.
VIEW_MIN_BYTES = 256 * 1024
_ENCODED, _RAW = 1, 2          # DetectRequest's image oneof
_RAW_DATA = 1                  # RawImage.data


@dataclass(frozen=True)
class RequestView:
    """A DetectRequest (`message`, every field but the image's bytes; for a raw image, its width and
    height) and the image's bytes (`image`: encoded, or the raw pixels), a view of the received bytes."""

    message: pb.DetectRequest
    kind: str                  # "encoded" or "raw"
    image: memoryview


def _split(data: bytes) -> tuple[bytes, bytes | None, str, int, int] | None:
    """The message without its image field; for a raw image, its RawImage without the pixels; the
    image's kind; and where its bytes lie in `data`. None when the request is not one the view takes
    (small image, unusual layout, malformed)."""
    try:
        found = fields(data, 0, len(data))
        images = [f for f in found if f[0] in (_ENCODED, _RAW)]
        if len(images) != 1 or images[0][1] != LEN:
            return None
        field, _, field_start, value_start, value_end = images[0]
        if field == _ENCODED:
            if value_end - value_start < VIEW_MIN_BYTES:
                return None
            return data[:field_start] + data[value_end:], None, "encoded", value_start, value_end
        inner = fields(data, value_start, value_end)
        pixels = [f for f in inner if f[0] == _RAW_DATA]
        if len(pixels) != 1 or pixels[0][1] != LEN or pixels[0][4] - pixels[0][3] < VIEW_MIN_BYTES:
            return None
        _, _, data_field_start, data_start, data_end = pixels[0]
        raw_rest = data[value_start:data_field_start] + data[data_end:value_end]
        return data[:field_start] + data[value_end:], raw_rest, "raw", data_start, data_end
    except (ValueError, IndexError):
        return None


def parse(data: bytes) -> pb.DetectRequest | RequestView:
    """A Detect or DetectStream request: a RequestView for a large image, else the parsed message.
    Raises what protobuf raises for bytes that are not a DetectRequest."""
    split = _split(data)
    if split is None:
        return pb.DetectRequest.FromString(data)
    rest, raw_rest, kind, start, end = split
    message = pb.DetectRequest.FromString(rest)
    if raw_rest is not None:  # the only image field: setting it after the others keeps protobuf's meaning
        message.raw.SetInParent()
        message.raw.MergeFromString(raw_rest)
    return RequestView(message, kind, memoryview(data)[start:end])


_METHODS = ("Detect", "DetectStream")


class _Swapped(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is not None and details.method.rpartition("/")[2] in _METHODS \
                and details.method.startswith(f"/{DETECTOR_SERVICE}/"):
            handler = handler._replace(request_deserializer=parse)
        return handler


class _Registrar:
    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Swapped(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        if service == DETECTOR_SERVICE:
            handlers = {m: h._replace(request_deserializer=parse) if m in _METHODS else h for m, h in handlers.items()}
        self._server.add_registered_method_handlers(service, handlers)


def with_request_views(server: Any) -> Any:
    """What to pass to `add_DetectorServicer_to_server` (around `guarded(server)`): Detect and
    DetectStream requests are parsed by `parse`, their servicer given a RequestView for a large image."""
    return _Registrar(server)
