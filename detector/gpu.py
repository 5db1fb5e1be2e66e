"""GPU telemetry sources: NVML (nvidia-ml-py), none (a CPU machine), and injected (tests, demos).

A source's `sample()` never raises: a GPU that stops answering is itself a signal (gpu_lost), and a
machine without NVML answers None, "unknown".
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Protocol

from eagleeye.common.logs import event

log = logging.getLogger("eagleeye.gpu")

# NVML clock-event (throttle) reason bits for thermal slowdown, software and hardware.
_SW_THERMAL = 0x20
_HW_THERMAL = 0x40
_HW_POWER_BRAKE = 0x80


@dataclass(frozen=True)
class GpuSample:
    """One reading of a GPU."""

    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    thermal_slowdown: bool
    ecc_uncorrected_total: int | None  # None: the GPU does not report ECC
    xid_events: tuple[int, ...]        # XID critical-error events since the previous sample
    gpu_lost: bool = False


LOST = GpuSample(0.0, 0, 0, 0.0, False, None, (), gpu_lost=True)


class TelemetrySource(Protocol):
    """Where GPU readings come from."""

    @property
    def description(self) -> str:
        """What the source reads, for logs."""
        ...

    def sample(self) -> GpuSample | None:
        """The current reading, or None when the GPU's state is unknown (no NVML)."""
        ...

    def close(self) -> None:
        """Release the source."""
        ...


class NoGpu:
    """A machine without NVML: every GPU signal is unknown."""

    def __init__(self, why: str) -> None:
        self.description = f"none ({why})"

    def sample(self) -> GpuSample | None:
        return None

    def close(self) -> None:
        pass


class NvmlSource:
    """Readings of one GPU through NVML; `nvml` is the pynvml module (injected so tests can fake it)."""

    def __init__(self, nvml: ModuleType | Any, handle: Any, name: str) -> None:
        self._nvml = nvml
        self._handle = handle
        self._events: Any = None
        self.description = f"nvml ({name})"
        try:
            self._events = nvml.nvmlEventSetCreate()
            nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self._events)
        except nvml.NVMLError as e:
            # Some GPUs and containers do not allow event registration: XIDs are then not watched.
            event(log, "nvml xid events unavailable", logging.WARNING, error=str(e))
            self._events = None

    def _xids(self) -> tuple[int, ...]:
        if self._events is None:
            return ()
        found: list[int] = []
        nvml = self._nvml
        while True:
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError_Timeout:
                return tuple(found)
            found.append(int(data.eventData))

    def _ecc(self) -> int | None:
        nvml = self._nvml
        try:
            return int(nvml.nvmlDeviceGetTotalEccErrors(
                self._handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC))
        except nvml.NVMLError_NotSupported:
            return None

    def _throttle(self) -> bool:
        nvml = self._nvml
        get = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        try:
            reasons = int(get(self._handle))
        except nvml.NVMLError_NotSupported:
            return False
        return bool(reasons & (_SW_THERMAL | _HW_THERMAL | _HW_POWER_BRAKE))

    def sample(self) -> GpuSample | None:
        nvml = self._nvml
        try:
            util = nvml.nvmlDeviceGetUtilizationRates(self._handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(self._handle)
            temp = nvml.nvmlDeviceGetTemperature(self._handle, nvml.NVML_TEMPERATURE_GPU)
            return GpuSample(
                utilization_percent=float(util.gpu),
                memory_used_bytes=int(mem.used),
                memory_total_bytes=int(mem.total),
                temperature_c=float(temp),
                thermal_slowdown=self._throttle(),
                ecc_uncorrected_total=self._ecc(),
                xid_events=self._xids(),
            )
        except nvml.NVMLError_GpuIsLost:
            return LOST
        except nvml.NVMLError as e:
            event(log, "nvml sample failed", logging.WARNING, error=str(e))
            return None

    def close(self) -> None:
        try:
            if self._events is not None:
                self._nvml.nvmlEventSetFree(self._events)
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def open_source(device: str, cuda_uuid: str | None) -> TelemetrySource:
    """NVML for a CUDA device (matched by UUID when known, else by index); NoGpu otherwise."""
    if not device.startswith("cuda"):
        return NoGpu("model runs on the CPU")
    try:
        import pynvml
    except ImportError:
        return NoGpu("nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return NoGpu(f"NVML unavailable: {e}")
    try:
        if cuda_uuid:
            handle = pynvml.nvmlDeviceGetHandleByUUID(cuda_uuid)
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(device.partition(":")[2] or 0))
        name = pynvml.nvmlDeviceGetName(handle)
    except pynvml.NVMLError as e:
        pynvml.nvmlShutdown()
        return NoGpu(f"NVML cannot find {device}: {e}")
    return NvmlSource(pynvml, handle, str(name))


class InjectedSource:
    """Wraps a real source; while a reading is injected (fault injection), it is returned instead.

    XID events are delivered once, as NVML delivers them.
    """

    def __init__(self, inner: TelemetrySource) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._injected: GpuSample | None = None
        self.description = f"injected over {inner.description}"

    def inject(self, reading: GpuSample | None) -> None:
        """Replace readings with `reading` (None: back to the real source)."""
        with self._lock:
            self._injected = reading

    def sample(self) -> GpuSample | None:
        with self._lock:
            reading = self._injected
            if reading is not None and reading.xid_events:
                self._injected = replace(reading, xid_events=())
        return reading if reading is not None else self._inner.sample()

    def close(self) -> None:
        self._inner.close()


class SwitchableSource:
    """A source that can be swapped once the device is known (the worker listens before that)."""

    def __init__(self, initial: TelemetrySource) -> None:
        self._source = initial

    @property
    def description(self) -> str:
        return self._source.description

    @property
    def injected(self) -> InjectedSource | None:
        """The fault-injection layer, when there is one."""
        return self._source if isinstance(self._source, InjectedSource) else None

    def use(self, source: TelemetrySource) -> None:
        """Read from `source` from now on."""
        self._source = source

    def sample(self) -> GpuSample | None:
        return self._source.sample()

    def close(self) -> None:
        self._source.close()
