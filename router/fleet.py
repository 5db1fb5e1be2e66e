"""The two backends, and what the data path's decisions ask about them (pure: no grpc, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class Backend(Enum):
    """The two backends."""

    PRIMARY = "primary"
    STANDBY = "standby"

    @property
    def other(self) -> Backend:
        return Backend.STANDBY if self is Backend.PRIMARY else Backend.PRIMARY


class Fleet(Protocol):
    """The router's current view, as the unary and stream decisions read it."""

    def usable(self, backend: Backend) -> bool:
        """Ready by every signal: a retry, a hedge or a stream may go there even at weight 0."""

    def placement(self, affinity: float) -> Backend | None:
        """Where a running stream with this affinity belongs now; None: wherever it is."""

    def hedge_delay_s(self, backend: Backend) -> float:
        """How long a unary call to `backend` may go unanswered before it is hedged."""

    def stall_s(self, backend: Backend) -> float:
        """How long `backend` may hold a stream's frames without answering any before it counts as stalled."""

    def progress_at(self, backend: Backend) -> float:
        """When `backend` last answered anything (a call, a frame, even a refusal); -inf if never.

        Slowness is blamed on a backend only when it made no progress on anything meanwhile: a backlog
        or a heavy request being worked through is load, not a fault.
        """


MIB = 1024 * 1024


@dataclass(frozen=True)
class RequestCost:
    """What a request's size adds to the time it may take before it is hedged, retried or called stalled.

    Decoding is proportional to an image's bytes: a 12 MB JPEG takes seconds on a busy CPU worker
    where a 50 KB frame takes milliseconds, and that is the request's cost, not the backend failing.
    """

    s_per_mib: float = 0.1   # 10 MiB/s: a 2-core CPU worker decoding several large JPEGs at once
    # The learned timers already cover the frames a backend usually gets (video frames are tens to
    # hundreds of KB): only bytes past this add to them.
    free_bytes: int = MIB

    def seconds(self, size: int) -> float:
        return self.s_per_mib * max(0, size - self.free_bytes) / MIB
