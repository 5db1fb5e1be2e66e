"""What a load run counts: every frame answered exactly once, in order, and how fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eagleeye.common.latency import percentile


@dataclass
class Tally:
    """Per-frame bookkeeping of a load run; `ordered`: answers must come in frame order (streams)."""

    ordered: bool = True
    sent: int = 0
    errors: int = 0
    reordered: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    answers: dict[int, int] = field(default_factory=dict)   # frame_id -> times answered
    sent_ids: set[int] = field(default_factory=set)
    error_codes: dict[str, int] = field(default_factory=dict)
    by_worker: dict[str, int] = field(default_factory=dict)  # answers per worker id
    _highest: int = -1

    def on_sent(self, frame_id: int) -> None:
        self.sent += 1
        self.sent_ids.add(frame_id)

    def on_answer(self, frame_id: int, latency_ms: float | None, worker: str = "") -> None:
        self.answers[frame_id] = self.answers.get(frame_id, 0) + 1
        if worker:
            self.by_worker[worker] = self.by_worker.get(worker, 0) + 1
        if self.ordered and frame_id < self._highest:
            self.reordered += 1
        self._highest = max(self._highest, frame_id)
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)

    def on_error(self, code: str) -> None:
        self.errors += 1
        self.error_codes[code] = self.error_codes.get(code, 0) + 1

    @property
    def answered(self) -> int:
        return sum(1 for f in self.answers if f in self.sent_ids)

    @property
    def duplicated(self) -> int:
        return sum(n - 1 for n in self.answers.values() if n > 1)

    @property
    def lost(self) -> int:
        return len(self.sent_ids - self.answers.keys())

    def summary(self, **extra: Any) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v, 2)

        return {
            "sent": self.sent, "answered": self.answered, "errors": self.errors, "lost": self.lost,
            "duplicated": self.duplicated, "reordered": self.reordered if self.ordered else None,
            "p50_ms": ms(percentile(self.latencies_ms, 50)), "p95_ms": ms(percentile(self.latencies_ms, 95)),
            "p99_ms": ms(percentile(self.latencies_ms, 99)), "error_codes": self.error_codes,
            "by_worker": self.by_worker, **extra,
        }
