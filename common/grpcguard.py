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

`guarded(server, admission)` also admits calls before their request is read (CallAdmission). grpcio
reads a unary-request method's request before it runs any code of ours, and counts the call against
`maximum_concurrent_rpcs` from its first byte: a peer that opens calls and never sends their request
(slowloris) holds those slots for as long as it likes, with nothing of ours knowing who it is. With an
admission, such methods are served as stream-request methods (the same bytes on the wire, so clients
see no difference): the call is counted against its peer at once, before anything is read, and a
request that has not arrived within `read_timeout_s` ends the call.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from eagleeye.common.admission import Full, Slots, peer_key


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


@dataclass(frozen=True)
class CallAdmission:
    """Calls a port takes at once, per peer (common/admission.peer_key) and in total, counted before
    their request is read; a unary request not received within `read_timeout_s` ends its call.
    `what` names the calls and the limits in refusals, e.g. "admin calls"."""

    slots: Slots
    read_timeout_s: float
    what: str
    per_peer_setting: str
    total_setting: str

    def refusal(self, full: Full, peer: str) -> str:
        if full is Full.PEER:
            return f"too many {self.what} at once from one client ({peer}; {self.per_peer_setting})"
        return f"too many {self.what} at once ({self.total_setting})"


async def _one_request(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                       admission: CallAdmission) -> Any:
    try:
        async with asyncio.timeout(admission.read_timeout_s):
            request = await anext(aiter(requests))
    except TimeoutError:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"request message not received within {admission.read_timeout_s:g} s")
    except StopAsyncIteration:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
    if isinstance(request, MalformedRequest):
        await _refuse(context, request)
    return request


def _admitted(behavior: Any, admission: CallAdmission) -> Any:
    """A unary-request behavior served as a stream-request one, admitted before its request is read."""
    async def take(context: grpc.aio.ServicerContext) -> str:
        key = peer_key(context.peer(), context.peer_identities())
        if (full := admission.slots.take(key)) is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, admission.refusal(full, key))
        return key

    if inspect.isasyncgenfunction(behavior):
        async def stream_out(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            key = await take(context)
            try:
                request = await _one_request(requests, context, admission)
                async for item in behavior(request, context):
                    yield item
            finally:
                admission.slots.give_back(key)
        return stream_out

    async def unary_out(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        key = await take(context)
        try:
            return await behavior(await _one_request(requests, context, admission), context)
        finally:
            admission.slots.give_back(key)
    return unary_out


def guard_handler(handler: grpc.RpcMethodHandler, admission: CallAdmission | None = None) -> grpc.RpcMethodHandler:
    """The same handler, with malformed requests answered INVALID_ARGUMENT (raw-bytes ones as they are);
    with `admission`, unary-request methods are admitted before their request is read."""
    if handler is None or handler.request_deserializer is None:
        return handler  # a raw-bytes handler parses for itself
    changes: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer)}
    if admission is not None and handler.unary_unary is not None:
        changes.update(request_streaming=True, unary_unary=None, stream_unary=_admitted(handler.unary_unary, admission))
    elif admission is not None and handler.unary_stream is not None:
        changes.update(request_streaming=True, unary_stream=None,
                       stream_stream=_admitted(handler.unary_stream, admission))
    elif handler.unary_unary is not None:
        changes["unary_unary"] = _guard_unary(handler.unary_unary)
    elif handler.unary_stream is not None:
        changes["unary_stream"] = _guard_unary(handler.unary_stream)
    return handler._replace(**changes)


class _GuardedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: grpc.GenericRpcHandler, admission: CallAdmission | None) -> None:
        self._inner = inner
        self._admission = admission

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else guard_handler(handler, self._admission)


class _GuardedRegistrar:
    """Stands in for the server while generated code registers a servicer."""

    def __init__(self, server: grpc.aio.Server, admission: CallAdmission | None) -> None:
        self._server = server
        self._admission = admission

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGeneric(h, self._admission) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {m: guard_handler(h, self._admission) for m, h in handlers.items()})


def guarded(server: grpc.aio.Server, admission: CallAdmission | None = None) -> Any:
    """What to pass to `add_*Servicer_to_server` instead of `server`: see the module docstring."""
    return _GuardedRegistrar(server, admission)
