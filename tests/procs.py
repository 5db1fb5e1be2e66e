"""Helpers for integration tests: real workers on 127.0.0.1:0, and the standard health client."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from eagleeye.harness.processes import BIN, Proc

__all__ = ["BIN", "NOT_SERVING", "SERVING", "HealthWatch", "Proc", "check", "reflect", "start_detector"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def reflect(address: str, symbol: str) -> tuple[set[str], set[str]]:
    """What a grpcurl user sees through server reflection: the services listed, and the methods of the
    service `symbol` as described by the file that defines it."""
    with grpc.insecure_channel(address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]), timeout=10))
    listed = {s.name for s in answers[0].list_services_response.service}
    methods = set()
    for raw in answers[1].file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        methods |= {f"{file.package}.{s.name}/{m.name}" for s in file.service for m in s.method}
    return listed, methods


def start_detector(*args: str) -> Proc:
    """An eagleeye-detector on an OS-assigned port of 127.0.0.1, listening."""
    proc = Proc("eagleeye-detector", ["--listen", "127.0.0.1:0", *args])
    proc.wait_listening()
    return proc


class HealthWatch:
    """Records every status a Watch stream delivers for one service name."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        self.statuses: list[int] = []
        self._cond = asyncio.Condition()
        self._call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for resp in self._call:
                async with self._cond:
                    self.statuses.append(resp.status)
                    self._cond.notify_all()
        except grpc.aio.AioRpcError:
            pass

    async def wait_for(self, status: int, timeout: float = 30.0, after: int = 0) -> int:
        """Wait until `status` is delivered at index >= `after`; returns its index."""
        def seen() -> bool:
            return status in self.statuses[after:]
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(seen), timeout)
        return self.statuses.index(status, after)

    def cancel(self) -> None:
        self._call.cancel()
        self._task.cancel()


async def check(channel: grpc.aio.Channel, service: str, timeout: float = 5.0) -> int:
    """One standard health Check."""
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout)
    return int(resp.status)
