"""State-dependent request defaults: knobs the router fills in, per router state, when a client left them unset.

The seed's example: while the standby has taken over (FAILOVER), detect with score_threshold 0.4
instead of the worker's 0.5, so that a standby under pressure, which scores lower, misses fewer
objects. A client that sets a knob itself always keeps its own value.

The router forwards requests as the bytes it received; a default is added by appending the field's
encoding to those bytes (protobuf reads a message's fields in any order, and a field that appears
later wins), so the image is never copied or re-encoded. Pure: no gRPC, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.common.cli import ConfigError
from eagleeye.common.protowire import encode_varint

STATES = ("NORMAL", "DEGRADED", "FAILOVER", "RECOVERING", "STANDBY_DOWN", "BOTH_DOWN")


@dataclass(frozen=True)
class _Field:
    number: int
    kind: str          # "float" or "uint32"
    low: float
    high: float
    low_open: bool = False

    def check(self, name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}={value!r}: must be a number")
        if self.kind == "uint32" and float(value) != int(value):
            raise ConfigError(f"{name}={value!r}: must be a whole number")
        ok = (self.low < value if self.low_open else self.low <= value) and value <= self.high
        if not ok:
            opening = "(" if self.low_open else "["
            raise ConfigError(f"{name}={value!r}: must be in {opening}{self.low:g}, {self.high:g}]")
        return float(value)

    def encode(self, value: float) -> bytes:
        if self.kind == "float":
            return bytes([self.number << 3 | 5]) + struct.pack("<f", value)
        return bytes([self.number << 3 | 0]) + encode_varint(int(value))




# The DetectRequest knobs a default may set, with the ranges the worker accepts.
FIELDS: dict[str, _Field] = {
    "score_threshold": _Field(pb.DetectRequest.SCORE_THRESHOLD_FIELD_NUMBER, "float", 0.0, 1.0),
    "iou_threshold": _Field(pb.DetectRequest.IOU_THRESHOLD_FIELD_NUMBER, "float", 0.0, 1.0, low_open=True),
    "max_detections": _Field(pb.DetectRequest.MAX_DETECTIONS_FIELD_NUMBER, "uint32", 1, 1000),
}


def check(table: object, name: str = "request_defaults") -> dict[str, dict[str, float]]:
    """A setting's value ({STATE: {field: value}}) checked, or a ConfigError naming what is wrong."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name}: must be a table of router states, e.g. {{FAILOVER = {{score_threshold = 0.4}}}}")
    out: dict[str, dict[str, float]] = {}
    for state, knobs in table.items():
        if state not in STATES:
            raise ConfigError(f"{name}.{state}: not a router state (one of {', '.join(STATES)})")
        if not isinstance(knobs, Mapping) or not knobs:
            raise ConfigError(f"{name}.{state}: must be a table of request fields, e.g. score_threshold = 0.4")
        out[state] = {}
        for key, value in knobs.items():
            spec = FIELDS.get(key)
            if spec is None:
                raise ConfigError(f"{name}.{state}.{key}: not a request default (one of {', '.join(FIELDS)})")
            out[state][key] = spec.check(f"{name}.{state}.{key}", value)
    return out


def parse_flag(text: str) -> tuple[str, str, float]:
    """`STATE:FIELD=VALUE` (the --request-default flag) as its three parts; ValueError if malformed."""
    state, sep, rest = text.partition(":")
    key, eq, value = rest.partition("=")
    if not sep or not eq:
        raise ValueError(f"{text!r} is not STATE:FIELD=VALUE, e.g. FAILOVER:score_threshold=0.4")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{text!r}: VALUE must be a number") from None
    return state.strip().upper(), key.strip(), number


@dataclass(frozen=True)
class Filled:
    """What a request became: the bytes to forward, and the fields the router filled in."""

    data: bytes
    fields: tuple[str, ...] = ()


class RequestPolicy:
    """The defaults for each router state; `fill` applies those of the current state to one request."""

    def __init__(self, by_state: Mapping[str, Mapping[str, float]]) -> None:
        self._encoded = {state: [(key, FIELDS[key].encode(value)) for key, value in knobs.items()]
                         for state, knobs in by_state.items()}

    def __bool__(self) -> bool:
        return bool(self._encoded)

    def fill(self, state: str, request: pb.DetectRequest, data: bytes) -> Filled:
        """`data` (the serialized `request`) with `state`'s defaults for the fields the client left unset."""
        extra = [(key, encoded) for key, encoded in self._encoded.get(state, ()) if not request.HasField(key)]
        if not extra:
            return Filled(data)
        return Filled(data + b"".join(encoded for _, encoded in extra), tuple(key for key, _ in extra))
