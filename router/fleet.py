"""The two backends, and what the data path's decisions ask about them (pure: no grpc, no clock)."""

from __future__ import annotations

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
