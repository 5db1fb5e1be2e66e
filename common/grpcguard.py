"""Malformed request bytes get INVALID_ARGUMENT, not UNKNOWN.

grpcio answers a request it cannot deserialize with UNKNOWN ("Unexpected error"), which reads like a
server bug and is what a client's retry logic treats as "try again". This interceptor wraps each
handler's deserializer: bytes that do not parse become a MalformedRequest, which unary-request
handlers answer with INVALID_ARGUMENT before the servicer runs; stream-request servicers receive it
in their iterator and decide (the worker's DetectStream ends the stream with INVALID_ARGUMENT).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class MalformedRequest:
    """What a request that did not deserialize becomes."""

    error: str


def _safe(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as e:  # protobuf raises DecodeError; anything else means the same here
            return MalformedRequest(str(e) or type(e).__name__)
    return parse


async def _refuse(context: grpc.aio.ServicerContext, request: MalformedRequest) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {request.error}")


def _guard_unary(behavior: Any) -> Any:
    if inspect.isasyncgenfunction(behavior):
        async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, MalformedRequest):
                await _refuse(context, request)
            async for item in behavior(request, context):
                yield item
        return stream_out

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            await _refuse(context, request)
        return await behavior(request, context)
    return guarded


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """See the module docstring."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method, or a raw-bytes handler that parses for itself
        changes: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer)}
        if handler.unary_unary is not None:
            changes["unary_unary"] = _guard_unary(handler.unary_unary)
        elif handler.unary_stream is not None:
            changes["unary_stream"] = _guard_unary(handler.unary_stream)
        return handler._replace(**changes)
