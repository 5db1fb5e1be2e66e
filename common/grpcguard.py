"""Malformed request bytes get INVALID_ARGUMENT, not UNKNOWN.

grpcio answers a request it cannot deserialize with UNKNOWN ("Unexpected error"), which reads like a
server bug and is what a client's retry logic treats as "try again". `guarded(server)` is what the
generated `add_*Servicer_to_server` functions are given instead of the server: it wraps each
handler's deserializer as it is registered, so that bytes that do not parse become a
MalformedRequest, which unary-request handlers answer with INVALID_ARGUMENT before the servicer
runs; stream-request servicers receive it in their iterator and decide (the worker's DetectStream
ends the stream with INVALID_ARGUMENT).

Wrapping at registration, not in a server interceptor: an aio interceptor runs on every call of
every method, the router's raw-bytes forwarding included, where it has nothing to guard.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
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


def guard_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, with malformed requests answered INVALID_ARGUMENT (raw-bytes ones as they are)."""
    if handler is None or handler.request_deserializer is None:
        return handler  # a raw-bytes handler parses for itself
    changes: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer)}
    if handler.unary_unary is not None:
        changes["unary_unary"] = _guard_unary(handler.unary_unary)
    elif handler.unary_stream is not None:
        changes["unary_stream"] = _guard_unary(handler.unary_stream)
    return handler._replace(**changes)


class _GuardedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else guard_handler(handler)


class _GuardedRegistrar:
    """Stands in for the server while generated code registers a servicer."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGeneric(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service, {m: guard_handler(h) for m, h in handlers.items()})


def guarded(server: grpc.aio.Server) -> Any:
    """What to pass to `add_*Servicer_to_server` instead of `server`: see the module docstring."""
    return _GuardedRegistrar(server)
