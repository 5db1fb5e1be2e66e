"""Fault injection (tests and demos only): the hooks on the inference thread and their gRPC service.

Registered only with --fault-injection. Lets a test delay or hang inference, raise a sticky CUDA
error, and feed GPU telemetry, so every health rule can be exercised on a machine without a GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from eagleeye.api.detector.testing.v1 import fault_injection_pb2 as pb
from eagleeye.api.detector.testing.v1 import fault_injection_pb2_grpc as pb_grpc
from eagleeye.common.logs import event
from eagleeye.detector.batcher import Batcher, InferenceHooks
from eagleeye.detector.gpu import GpuSample, SwitchableSource

log = logging.getLogger("eagleeye.faults")

# The message a real illegal access produces, so the injected error takes the real path.
INJECTED_CUDA_ERROR = "CUDA error: an illegal memory access was encountered (injected)"


class FaultHooks(InferenceHooks):
    """Delay, hang or fail the next batches on the inference thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._delay_s = 0.0
        self._release = threading.Event()
        self._release.set()
        self._raise_cuda = False

    def delay(self, seconds: float) -> None:
        """Every batch takes `seconds` longer."""
        with self._lock:
            self._delay_s = seconds

    def hang(self) -> None:
        """Batches block until clear()."""
        self._release.clear()

    def raise_cuda_error(self) -> None:
        """The next batch raises a sticky CUDA error."""
        with self._lock:
            self._raise_cuda = True

    def clear(self) -> None:
        """No delay, no hang, no pending error."""
        with self._lock:
            self._delay_s = 0.0
            self._raise_cuda = False
        self._release.set()

    def describe(self) -> str:
        """A short summary of what is injected."""
        with self._lock:
            parts = [f"delay={self._delay_s}s"] if self._delay_s else []
            if self._raise_cuda:
                parts.append("cuda-error-pending")
        if not self._release.is_set():
            parts.append("hang")
        return ",".join(parts) or "none"

    def before_batch(self) -> None:
        self._release.wait()
        with self._lock:
            delay, fail = self._delay_s, self._raise_cuda
            self._raise_cuda = False
        if delay:
            time.sleep(delay)  # the injected fault itself: a slow GPU
        if fail:
            raise RuntimeError(INJECTED_CUDA_ERROR)


class FaultInjectionServicer(pb_grpc.FaultInjectionServicer):
    """The gRPC face of FaultHooks and InjectedSource."""

    def __init__(self, hooks: FaultHooks, telemetry: SwitchableSource,
                 batcher: Callable[[], Batcher | None], changed: Callable[[], None]) -> None:
        self._hooks = hooks
        self._telemetry = telemetry
        self._batcher = batcher
        self._changed = changed

    def _injected(self, what: str) -> str:
        """Log and announce a change of the fault state; the state, for the answer."""
        event(log, "fault injected", logging.WARNING, fault=what, state=self._hooks.describe())
        self._changed()
        return self._hooks.describe()

    async def SetTelemetry(self, request: pb.SetTelemetryRequest,
                           context: grpc.aio.ServicerContext) -> pb.SetTelemetryResponse:
        if request.memory_total_bytes and request.memory_used_bytes > request.memory_total_bytes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "memory_used_bytes exceeds memory_total_bytes")
        injected = self._telemetry.injected
        if injected is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the device is not open yet; retry shortly")
            raise AssertionError("unreachable")
        injected.inject(GpuSample(
            utilization_percent=request.utilization_percent,
            memory_used_bytes=request.memory_used_bytes,
            memory_total_bytes=request.memory_total_bytes,
            temperature_c=request.temperature_c,
            thermal_slowdown=request.thermal_slowdown,
            ecc_uncorrected_total=request.ecc_uncorrected_total,
            xid_events=tuple(request.xid_events),
            gpu_lost=request.gpu_lost,
        ))
        return pb.SetTelemetryResponse(state=self._injected("telemetry"))

    async def DelayInference(self, request: pb.DelayInferenceRequest,
                             context: grpc.aio.ServicerContext) -> pb.DelayInferenceResponse:
        if not 0 <= request.seconds <= 600:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "seconds must be in [0, 600]")
        self._hooks.delay(request.seconds)
        return pb.DelayInferenceResponse(state=self._injected("delay"))

    async def HangInference(self, request: pb.HangInferenceRequest,
                            context: grpc.aio.ServicerContext) -> pb.HangInferenceResponse:
        self._hooks.hang()
        return pb.HangInferenceResponse(state=self._injected("hang"))

    async def RaiseCudaError(self, request: pb.RaiseCudaErrorRequest,
                             context: grpc.aio.ServicerContext) -> pb.RaiseCudaErrorResponse:
        self._hooks.raise_cuda_error()
        return pb.RaiseCudaErrorResponse(state=self._injected("cuda-error"))

    async def ClearFaults(self, request: pb.ClearFaultsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ClearFaultsResponse:
        self._hooks.clear()
        if self._telemetry.injected is not None:
            self._telemetry.injected.inject(None)
        return pb.ClearFaultsResponse(state=self._injected("clear"))

    async def GetInferenceState(self, request: pb.GetInferenceStateRequest,
                                context: grpc.aio.ServicerContext) -> pb.GetInferenceStateResponse:
        batcher = self._batcher()
        if batcher is None:
            return pb.GetInferenceStateResponse(faults=self._hooks.describe())
        return pb.GetInferenceStateResponse(in_flight=batcher.in_flight, batches=batcher.batches,
                                 sticky_error=batcher.sticky_error or "", faults=self._hooks.describe())
