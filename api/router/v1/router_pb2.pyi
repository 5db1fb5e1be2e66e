from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Backend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_UNSPECIFIED: _ClassVar[Backend]
    BACKEND_PRIMARY: _ClassVar[Backend]
    BACKEND_STANDBY: _ClassVar[Backend]
BACKEND_UNSPECIFIED: Backend
BACKEND_PRIMARY: Backend
BACKEND_STANDBY: Backend

class GetStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: RouterState
    def __init__(self, state: _Optional[_Union[RouterState, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("replay_recent",)
    REPLAY_RECENT_FIELD_NUMBER: _ClassVar[int]
    replay_recent: int
    def __init__(self, replay_recent: _Optional[int] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: SwitchEvent
    def __init__(self, event: _Optional[_Union[SwitchEvent, _Mapping]] = ...) -> None: ...

class SetDrainRequest(_message.Message):
    __slots__ = ("backend", "drained", "worker")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    drained: bool
    worker: str
    def __init__(self, backend: _Optional[_Union[Backend, str]] = ..., drained: _Optional[bool] = ..., worker: _Optional[str] = ...) -> None: ...

class SetDrainResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: RouterState
    def __init__(self, state: _Optional[_Union[RouterState, _Mapping]] = ...) -> None: ...

class SwitchRequest(_message.Message):
    __slots__ = ("to", "force")
    TO_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    to: Backend
    force: bool
    def __init__(self, to: _Optional[_Union[Backend, str]] = ..., force: _Optional[bool] = ...) -> None: ...

class SwitchResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: RouterState
    def __init__(self, state: _Optional[_Union[RouterState, _Mapping]] = ...) -> None: ...

class BackendHealth(_message.Message):
    __slots__ = ("backend", "address", "ready", "headroom", "reason", "watch_connected", "consecutive_check_failures", "consecutive_healthy_checks", "ejected", "drained", "weight", "name", "outstanding", "reported_queue", "reported_utilization")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WATCH_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_CHECK_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_HEALTHY_CHECKS_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    REPORTED_QUEUE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    address: str
    ready: bool
    headroom: bool
    reason: str
    watch_connected: bool
    consecutive_check_failures: int
    consecutive_healthy_checks: int
    ejected: bool
    drained: bool
    weight: float
    name: str
    outstanding: int
    reported_queue: float
    reported_utilization: float
    def __init__(self, backend: _Optional[_Union[Backend, str]] = ..., address: _Optional[str] = ..., ready: _Optional[bool] = ..., headroom: _Optional[bool] = ..., reason: _Optional[str] = ..., watch_connected: _Optional[bool] = ..., consecutive_check_failures: _Optional[int] = ..., consecutive_healthy_checks: _Optional[int] = ..., ejected: _Optional[bool] = ..., drained: _Optional[bool] = ..., weight: _Optional[float] = ..., name: _Optional[str] = ..., outstanding: _Optional[int] = ..., reported_queue: _Optional[float] = ..., reported_utilization: _Optional[float] = ...) -> None: ...

class SwitchEvent(_message.Message):
    __slots__ = ("time_unix", "from_state", "to_state", "reason", "detection_ms", "primary_weight", "standby_weight", "latency_before_ms", "latency_after_ms", "worker")
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETECTION_MS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STANDBY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    time_unix: float
    from_state: str
    to_state: str
    reason: str
    detection_ms: float
    primary_weight: float
    standby_weight: float
    latency_before_ms: float
    latency_after_ms: float
    worker: str
    def __init__(self, time_unix: _Optional[float] = ..., from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., reason: _Optional[str] = ..., detection_ms: _Optional[float] = ..., primary_weight: _Optional[float] = ..., standby_weight: _Optional[float] = ..., latency_before_ms: _Optional[float] = ..., latency_after_ms: _Optional[float] = ..., worker: _Optional[str] = ...) -> None: ...

class RouterState(_message.Message):
    __slots__ = ("state", "backends", "recent_events", "hold_down_remaining_s", "ramp_progress", "next_hold_down_s", "xds_endpoints_version", "xds_clients")
    STATE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    RECENT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    HOLD_DOWN_REMAINING_S_FIELD_NUMBER: _ClassVar[int]
    RAMP_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOLD_DOWN_S_FIELD_NUMBER: _ClassVar[int]
    XDS_ENDPOINTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    XDS_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    state: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendHealth]
    recent_events: _containers.RepeatedCompositeFieldContainer[SwitchEvent]
    hold_down_remaining_s: float
    ramp_progress: float
    next_hold_down_s: float
    xds_endpoints_version: str
    xds_clients: _containers.RepeatedCompositeFieldContainer[XdsClient]
    def __init__(self, state: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendHealth, _Mapping]]] = ..., recent_events: _Optional[_Iterable[_Union[SwitchEvent, _Mapping]]] = ..., hold_down_remaining_s: _Optional[float] = ..., ramp_progress: _Optional[float] = ..., next_hold_down_s: _Optional[float] = ..., xds_endpoints_version: _Optional[str] = ..., xds_clients: _Optional[_Iterable[_Union[XdsClient, _Mapping]]] = ...) -> None: ...

class XdsClient(_message.Message):
    __slots__ = ("node_id", "peer", "user_agent", "connected_unix", "endpoints_version", "nack")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer: str
    user_agent: str
    connected_unix: float
    endpoints_version: str
    nack: str
    def __init__(self, node_id: _Optional[str] = ..., peer: _Optional[str] = ..., user_agent: _Optional[str] = ..., connected_unix: _Optional[float] = ..., endpoints_version: _Optional[str] = ..., nack: _Optional[str] = ...) -> None: ...
