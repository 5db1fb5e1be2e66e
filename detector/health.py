"""The pure health evaluator: signals and `now` in, statuses and reasons out.

No gRPC, no clock, no I/O: the monitor gathers signals, calls `evaluate`, and publishes the report.
The evaluator keeps only what the rules need across evaluations (how long a condition has held,
consecutive counts, latched criticals).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from eagleeye.api.names import HEADROOM, LIVENESS, READINESS_NAMES
from eagleeye.detector.config import HealthConfig
from eagleeye.detector.gpu import GpuSample

ALL_NAMES: tuple[str, ...] = (*READINESS_NAMES, LIVENESS, HEADROOM)

# XIDs caused by the application, not the GPU (NVIDIA's XID catalogue: 13 graphics engine
# exception, 31 MMU fault, 43 GPU stopped processing, 45 preemptive cleanup): a bad kernel, not a
# bad GPU. Every other XID reported as critical by NVML means the GPU itself is suspect.
APPLICATION_XIDS = frozenset({13, 31, 43, 45})


class CanaryOutcome(Enum):
    """How the last finished canary went."""

    OK = "ok"
    LATE = "late"            # answered after its deadline
    WRONG = "wrong"          # output differs from the golden answer
    NON_FINITE = "non-finite"
    FAILED = "failed"        # inference raised


@dataclass(frozen=True)
class CanaryState:
    """The canary as the monitor sees it."""

    last: CanaryOutcome | None = None  # None: none finished yet
    detail: str = ""
    inflight_since: float | None = None


@dataclass(frozen=True)
class Signals:
    """Everything the rules look at, gathered at one moment."""

    model_ready: bool                   # loaded, warm-up passed
    model_error: str | None = None      # loading or warm-up failed
    canary: CanaryState = CanaryState()
    sticky_cuda_error: str | None = None
    gpu_expected: bool = False          # the model runs on a CUDA device
    gpu: GpuSample | None = None        # None: unknown (no NVML)
    latency_p95_ms: float | None = None  # the worker's own time, waits excluded; None: no requests
    queue_depth: int = 0                # frames waiting: for a decode thread or in the batch queue
    queue_capacity: int = 1             # the batch queue's bound (max_queue)


@dataclass(frozen=True)
class HealthReport:
    """The statuses to publish and why; `reasons` lists every active condition."""

    ready: bool
    live: bool
    headroom: bool
    reasons: tuple[str, ...]

    def statuses(self) -> dict[str, bool]:
        """Service name -> SERVING?"""
        out = dict.fromkeys(READINESS_NAMES, self.ready)
        out[LIVENESS] = self.live
        out[HEADROOM] = self.headroom
        return out


class HealthEvaluator:
    """Applies SPEC.md's rules to successive Signals."""

    def __init__(self, cfg: HealthConfig) -> None:
        self._cfg = cfg
        self._util_high_since: float | None = None
        self._temp_high_since: float | None = None
        self._temp_critical_since: float | None = None
        self._temp_cool_since: float | None = None
        self._temp_guard: str | None = None  # the reason while the hard guard holds readiness down
        self._memory: deque[int] = deque(maxlen=cfg.memory_trend_samples)
        self._ecc_baseline: int | None = None
        self._latched: list[str] = []   # GPU criticals: they need a human, not a retry
        self._latency_over = 0
        self._latency_under = 0
        self._latency_high = False
        self._multi_soft = 0

    def _latch(self, reason: str) -> None:
        if reason not in self._latched:
            self._latched.append(reason)

    def _gpu_rules(self, gpu: GpuSample, now: float) -> list[str]:
        """Latch criticals; return active soft triggers."""
        cfg = self._cfg
        if gpu.gpu_lost:
            self._latch("gpu: lost (fallen off the bus or not answering NVML)")
            return []
        for xid in gpu.xid_events:
            if xid not in APPLICATION_XIDS:
                self._latch(f"gpu: critical XID {xid}")
        if gpu.ecc_uncorrected_total is not None:
            if self._ecc_baseline is None:
                self._ecc_baseline = gpu.ecc_uncorrected_total
            elif gpu.ecc_uncorrected_total > self._ecc_baseline:
                self._latch(f"gpu: uncorrected ECC errors rose from {self._ecc_baseline} "
                            f"to {gpu.ecc_uncorrected_total}")
        soft: list[str] = []
        if gpu.utilization_percent > cfg.utilization_high_percent:
            self._util_high_since = self._util_high_since if self._util_high_since is not None else now
            if now - self._util_high_since >= cfg.utilization_high_for_s:
                soft.append(f"gpu: utilization {gpu.utilization_percent:.0f}% > "
                            f"{cfg.utilization_high_percent:.0f}% for {now - self._util_high_since:.0f} s")
        else:
            self._util_high_since = None
        self._memory.append(gpu.memory_used_bytes)
        total = gpu.memory_total_bytes
        if total > 0:
            fraction = gpu.memory_used_bytes / total
            growing = (len(self._memory) == self._memory.maxlen and
                       all(b >= a for a, b in zip(self._memory, list(self._memory)[1:])) and
                       self._memory[-1] > self._memory[0])
            if fraction > cfg.memory_high_fraction and growing:
                soft.append(f"gpu: memory {fraction:.0%} used and still growing")
            free = total - gpu.memory_used_bytes
            if free < cfg.min_free_memory_bytes:
                soft.append(f"gpu: only {free // (1024 * 1024)} MiB free "
                            f"(< {cfg.min_free_memory_bytes // (1024 * 1024)} MiB)")
        if gpu.temperature_c > cfg.temperature_high_c:
            self._temp_high_since = self._temp_high_since if self._temp_high_since is not None else now
            if now - self._temp_high_since >= cfg.temperature_high_for_s:
                soft.append(f"gpu: temperature {gpu.temperature_c:.0f} C > {cfg.temperature_high_c:.0f} C "
                            f"for {now - self._temp_high_since:.0f} s")
        else:
            self._temp_high_since = None
        if gpu.thermal_slowdown:
            soft.append("gpu: clocks slowed down (thermal or power brake)")
        return soft

    def _temperature_guard(self, gpu: GpuSample | None, now: float) -> str | None:
        """Hardware protection: the reason readiness is held down for heat, or None.

        Trips after temperature_critical_c for temperature_critical_for_s; holds until the GPU has stayed
        below temperature_recover_c for temperature_recover_for_s (no sample: no change).
        """
        cfg = self._cfg
        if gpu is None or gpu.gpu_lost:
            return self._temp_guard
        t = gpu.temperature_c
        if self._temp_guard is None:
            if t > cfg.temperature_critical_c:
                self._temp_critical_since = self._temp_critical_since if self._temp_critical_since is not None else now
                if now - self._temp_critical_since >= cfg.temperature_critical_for_s:
                    self._temp_guard = (f"gpu: temperature over {cfg.temperature_critical_c:.0f} C for "
                                        f"{now - self._temp_critical_since:.0f} s (hardware protection; held until "
                                        f"below {cfg.temperature_recover_c:.0f} C for "
                                        f"{cfg.temperature_recover_for_s:.0f} s)")
                    self._temp_cool_since = None
            else:
                self._temp_critical_since = None
        elif t < cfg.temperature_recover_c:
            self._temp_cool_since = self._temp_cool_since if self._temp_cool_since is not None else now
            if now - self._temp_cool_since >= cfg.temperature_recover_for_s:
                self._temp_guard = None
                self._temp_critical_since = None
        else:
            self._temp_cool_since = None
        return self._temp_guard

    def _canary_rules(self, canary: CanaryState, now: float) -> tuple[list[str], bool]:
        """Reasons readiness fails on the canary, and whether liveness fails too."""
        cfg = self._cfg
        if canary.inflight_since is not None:
            waited = now - canary.inflight_since
            if waited > cfg.canary_hang_s:
                return [f"canary: no answer for {waited:.1f} s (> {cfg.canary_hang_s} s): inference hung"], True
            if waited > cfg.canary_deadline_s:
                return [f"canary: no answer for {waited:.1f} s (deadline {cfg.canary_deadline_s} s)"], False
        if canary.last is not None and canary.last is not CanaryOutcome.OK:
            return [f"canary: {canary.last.value}: {canary.detail}"], False
        return [], False

    def evaluate(self, s: Signals, now: float) -> HealthReport:
        """Apply every rule to `s` at time `now` (seconds on any monotonic scale)."""
        cfg = self._cfg
        not_ready: list[str] = []
        not_live: list[str] = []
        soft: list[str] = []

        if s.model_error is not None:
            not_ready.append(f"model: {s.model_error}")
        elif not s.model_ready:
            not_ready.append("model: loading or warming up")
        if s.sticky_cuda_error is not None:
            reason = f"cuda: sticky error, context unusable until restart: {s.sticky_cuda_error}"
            not_ready.append(reason)
            not_live.append(reason)
        if s.model_ready:
            canary_reasons, hung = self._canary_rules(s.canary, now)
            not_ready.extend(canary_reasons)
            if hung:
                not_live.extend(canary_reasons)

        if s.gpu is not None:
            soft.extend(self._gpu_rules(s.gpu, now))
        elif cfg.require_gpu:
            not_ready.append("gpu: none usable and --require-gpu is set" if not s.gpu_expected
                             else "gpu: state unknown (NVML unavailable) and --require-gpu is set")
        not_ready.extend(self._latched)
        too_hot = self._temperature_guard(s.gpu, now)
        if too_hot is not None:
            not_ready.append(too_hot)

        p95 = s.latency_p95_ms
        if not self._latency_high:
            self._latency_over = self._latency_over + 1 if p95 is not None and p95 > cfg.latency_budget_ms else 0
            self._latency_high = self._latency_over >= cfg.confirm_evaluations
            self._latency_under = 0
        else:
            clear = p95 is None or p95 < cfg.latency_clear_fraction * cfg.latency_budget_ms
            self._latency_under = self._latency_under + 1 if clear else 0
            if self._latency_under >= cfg.confirm_evaluations:
                self._latency_high = False
                self._latency_over = 0
        if self._latency_high:
            shown = "unknown" if p95 is None else f"{p95:.0f} ms"
            soft.append(f"latency: p95 {shown} over budget {cfg.latency_budget_ms:.0f} ms (clears below "
                        f"{cfg.latency_clear_fraction * cfg.latency_budget_ms:.0f} ms)")
        if s.queue_capacity > 0 and s.queue_depth >= cfg.backlog_fraction * s.queue_capacity:
            soft.append(f"queue: backlog {s.queue_depth}/{s.queue_capacity}")

        self._multi_soft = self._multi_soft + 1 if len(soft) >= 2 else 0
        if self._multi_soft >= cfg.confirm_evaluations:
            not_ready.append(f"soft: {len(soft)} soft triggers for {self._multi_soft} evaluations")

        ready = not not_ready
        return HealthReport(
            ready=ready,
            live=not not_live,
            headroom=ready and not soft,
            reasons=tuple(dict.fromkeys(not_ready + soft)),
        )
