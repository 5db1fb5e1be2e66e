"""Internal failures as clients see them: a short message and an error id; the detail goes to the log.

Exception text (torch, CUDA) and internal addresses tell a client nothing it can act on and an
attacker something; the operator needs them. `IncidentLog.report` logs the detail once under a fresh
id and returns the client's text naming that id. The same failure repeated within `window_s` (every
call while both workers are down) reuses the id and is counted, not logged again, so a failure storm
cannot flood the log.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from eagleeye.common.logs import event


class IncidentLog:
    """Error ids for internal failures, logged once per distinct failure per window."""

    def __init__(self, logger: logging.Logger, window_s: float = 1.0, max_kept: int = 256,
                 clock: Callable[[], float] = time.monotonic, *, where: str = "server") -> None:
        self._log = logger
        self._where = where  # whose log the client is sent to: "worker", "router"
        self._window_s = window_s
        self._max_kept = max_kept
        self._clock = clock
        self._recent: dict[tuple[str, str], tuple[str, float, int]] = {}  # (message, detail) -> id, since, repeats

    def report(self, message: str, detail: str, level: int = logging.ERROR, *, what: str = "internal error",
               **fields: Any) -> str:
        """The client's text for an internal failure: `message` and an id; the log has `detail` under it,
        as an event named `what` (a failure that is not the server's own fault names itself otherwise)."""
        now = self._clock()
        key = (message, detail)
        seen = self._recent.get(key)
        if seen is not None and now - seen[1] < self._window_s:
            self._recent[key] = (seen[0], seen[1], seen[2] + 1)
            return _client_text(message, seen[0], self._where)
        if seen is not None and seen[2]:
            event(self._log, f"{what} repeated", level, error_id=seen[0], repeats=seen[2])
        if len(self._recent) >= self._max_kept:
            self._recent = {k: v for k, v in self._recent.items() if now - v[1] < self._window_s}
            if len(self._recent) >= self._max_kept:
                self._recent.clear()
        error_id = secrets.token_hex(6)
        self._recent[key] = (error_id, now, 0)
        event(self._log, what, level, error_id=error_id, message=message, detail=detail, **fields)
        return _client_text(message, error_id, self._where)


def _client_text(message: str, error_id: str, where: str) -> str:
    return f"{message} (error id {error_id}; the {where}'s log has the detail)"
