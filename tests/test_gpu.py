"""GPU telemetry sources. NvmlSource runs against a fake pynvml that behaves as the real one does."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from eagleeye.detector.gpu import LOST, GpuSample, InjectedSource, NoGpu, NvmlSource, open_source


class FakeNvml:
    """The parts of pynvml NvmlSource uses; errors are classes, as in pynvml."""

    class NVMLError(Exception):
        pass

    class NVMLError_Timeout(NVMLError):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    nvmlEventTypeXidCriticalError = 8
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        self.xids: list[int] = []
        self.lost = False
        self.ecc: int | None = 2
        self.reasons = 0
        self.shutdown = False

    def nvmlEventSetCreate(self) -> str:
        return "events"

    def nvmlDeviceRegisterEvents(self, handle: Any, kinds: int, events: Any) -> None:
        assert kinds == self.nvmlEventTypeXidCriticalError

    def nvmlEventSetWait_v2(self, events: Any, timeout_ms: int) -> Any:
        if not self.xids:
            raise self.NVMLError_Timeout()
        return SimpleNamespace(eventData=self.xids.pop(0))

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        if self.lost:
            raise self.NVMLError_GpuIsLost()
        return SimpleNamespace(gpu=87, memory=30)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return SimpleNamespace(used=3 * 2**30, total=16 * 2**30, free=13 * 2**30)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        return 71

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self.reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, kind: int, counter: int) -> int:
        if self.ecc is None:
            raise self.NVMLError_NotSupported()
        return self.ecc

    def nvmlEventSetFree(self, events: Any) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdown = True


def test_nvml_readings_are_mapped() -> None:
    nvml = FakeNvml()
    src = NvmlSource(nvml, "h", "Fake GPU")
    nvml.xids = [79, 13]
    s = src.sample()
    assert s == GpuSample(87.0, 3 * 2**30, 16 * 2**30, 71.0, False, 2, (79, 13))
    assert src.sample().xid_events == ()  # type: ignore[union-attr]
    src.close()
    assert nvml.shutdown


def test_thermal_slowdown_bits_and_unsupported_ecc() -> None:
    nvml = FakeNvml()
    nvml.reasons = 0x40
    nvml.ecc = None
    s = NvmlSource(nvml, "h", "Fake GPU").sample()
    assert s is not None and s.thermal_slowdown and s.ecc_uncorrected_total is None


def test_a_lost_gpu_is_reported_not_raised() -> None:
    nvml = FakeNvml()
    nvml.lost = True
    assert NvmlSource(nvml, "h", "Fake GPU").sample() == LOST


def test_cpu_device_has_no_gpu_telemetry() -> None:
    src = open_source("cpu", None)
    assert isinstance(src, NoGpu) and src.sample() is None


def test_nvml_without_a_gpu_is_unknown_not_an_error() -> None:
    pytest.importorskip("pynvml")
    src = open_source("cuda:0", None)
    # On a machine with a GPU this is an NvmlSource; without one it must say why.
    assert src.sample() is None or isinstance(src.sample(), GpuSample)
    src.close()


def test_injected_readings_replace_the_real_ones_and_xids_arrive_once() -> None:
    src = InjectedSource(NoGpu("test"))
    assert src.sample() is None
    reading = GpuSample(99, 1, 2, 90, True, 0, (79,))
    src.inject(reading)
    assert src.sample() == reading
    assert src.sample() == replace(reading, xid_events=())
    src.inject(None)
    assert src.sample() is None
