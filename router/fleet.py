"""The workers (primaries and standbys), and what the data path's decisions ask about them (pure: no grpc,
no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Protocol


class Role(Enum):
    """What a worker is for: carrying the traffic, or standing by warm to take a failed primary's share."""

    PRIMARY = "primary"
    STANDBY = "standby"


@dataclass(frozen=True)
class Backend:
    """One worker the router sends to. In a pair its name is its role (`primary`, `standby`, as in logs,
    metrics and the admin API since the start); in a pool, its role and address (`primary/10.0.0.5:50051`)."""

    role: Role
    name: str

    PRIMARY: ClassVar[Backend]
    STANDBY: ClassVar[Backend]

    @property
    def value(self) -> str:
        return self.name

    @property
    def primary(self) -> bool:
        return self.role is Role.PRIMARY

    @staticmethod
    def of(role: Role, address: str, pooled: bool) -> Backend:
        return Backend(role, f"{role.value}/{address}" if pooled else role.value)


Backend.PRIMARY = Backend(Role.PRIMARY, "primary")
Backend.STANDBY = Backend(Role.STANDBY, "standby")


@dataclass(eq=False)  # by identity: the controller keeps the live ones in a weak set
class StreamPlace:
    """Where a stream belongs: its `home` primary (chosen by load when it opens, again if that primary
    leaves the pool, and at most once more when a primary joins and the pool rebalances) and its
    `affinity` in [0, 100), which decides when it leaves home and comes back."""

    affinity: float
    home: Backend | None = None


class Fleet(Protocol):
    """The router's current view, as the unary and stream decisions read it."""

    def usable(self, backend: Backend) -> bool:
        """Ready by every signal: a retry, a hedge or a stream may go there even at weight 0."""

    def alternative(self, backend: Backend | None) -> Backend | None:
        """Another usable worker for what `backend` did not answer (a hedge, a retry, a stream's replay),
        the least loaded; None when there is none. With None: any usable worker."""

    def placement(self, place: StreamPlace, current: Backend | None) -> Backend | None:
        """Where a stream belongs now; None: wherever it is. May give the stream a new home."""

    def hedge_delay_s(self, backend: Backend) -> float:
        """How long a unary call to `backend` may go unanswered before it is hedged."""

    def stall_s(self, backend: Backend) -> float:
        """How long `backend` may hold a stream's frames without answering any before it counts as stalled."""

    def progress_at(self, backend: Backend) -> float:
        """When `backend` last answered anything (a call, a frame, even a refusal); -inf if never.

        Slowness is blamed on a backend only when it made no progress on anything meanwhile: a backlog
        or a heavy request being worked through is load, not a fault.
        """

    def loaded(self, backend: Backend) -> bool:
        """`backend` says it is at capacity (its headroom is NOT_SERVING): a wait on it is load, not a
        fault. A stall there still moves the stream or retries the call, without blame; a worker hung
        under load is caught by its own readiness (its canary jumps the queue) and the router's Checks."""

    def heard_since(self, t: float) -> float:
        """`t` moved later by the time the router's own loop ran behind since `t` (busy with a burst of
        new calls, say): answers that arrived then waited unread, so a silence measured from `t` counts
        only the time the router could have heard one."""


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
