from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SetTelemetryRequest(_message.Message):
    __slots__ = ("utilization_percent", "memory_used_bytes", "memory_total_bytes", "temperature_c", "thermal_slowdown", "ecc_uncorrected_total", "xid_events", "gpu_lost")
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    THERMAL_SLOWDOWN_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    XID_EVENTS_FIELD_NUMBER: _ClassVar[int]
    GPU_LOST_FIELD_NUMBER: _ClassVar[int]
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    thermal_slowdown: bool
    ecc_uncorrected_total: int
    xid_events: _containers.RepeatedScalarFieldContainer[int]
    gpu_lost: bool
    def __init__(self, utilization_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., temperature_c: _Optional[float] = ..., thermal_slowdown: _Optional[bool] = ..., ecc_uncorrected_total: _Optional[int] = ..., xid_events: _Optional[_Iterable[int]] = ..., gpu_lost: _Optional[bool] = ...) -> None: ...

class DelayInferenceRequest(_message.Message):
    __slots__ = ("seconds",)
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    def __init__(self, seconds: _Optional[float] = ...) -> None: ...

class HangInferenceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RaiseCudaErrorRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearFaultsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetTelemetryResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class DelayInferenceResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class HangInferenceResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class RaiseCudaErrorResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class ClearFaultsResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class GetInferenceStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInferenceStateResponse(_message.Message):
    __slots__ = ("in_flight", "batches", "sticky_error", "faults")
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    STICKY_ERROR_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    batches: int
    sticky_error: str
    faults: str
    def __init__(self, in_flight: _Optional[int] = ..., batches: _Optional[int] = ..., sticky_error: _Optional[str] = ..., faults: _Optional[str] = ...) -> None: ...
