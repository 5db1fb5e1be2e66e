"""Shared fixtures: a fault-injectable worker with fast health timings, started once per module."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, start_detector

# A process whose event loop ran a due timer this late froze every task it had, health answers included.
LOOP_LAG_LIMIT_MS = 100.0
# ... and the loop held itself when its own thread was on a core for most of the wait (a spin, a long
# computation or too many callbacks on the loop). A lag during which the thread hardly ran is this
# shared 2-core machine having no core for it: the lag metric shows it, the suite does not fail for it.
LOOP_HELD_SHARE = 0.5

# Fast evaluations so tests see transitions within seconds; deadlines generous for a busy 2-core box.
FAST: dict[str, object] = {"max_image_bytes": 2 * 1024 * 1024}
FAST_HEALTH: dict[str, object] = {
    "evaluate_interval_s": 0.1, "canary_interval_s": 0.2, "canary_deadline_s": 1.5, "canary_hang_s": 4.0,
    "utilization_high_for_s": 0.5, "temperature_high_for_s": 0.5, "latency_budget_ms": 2000,
    "temperature_critical_for_s": 0.5, "temperature_recover_for_s": 1.0,
}


def fast_config(directory: Path, top: dict[str, object] | None = None,
                health: dict[str, object] | None = None) -> str:
    """A worker TOML file with FAST settings, overridden by `top` and `health`."""
    def lines(table: dict[str, object]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    path = directory / "worker.toml"
    path.write_text(lines({**FAST, **(top or {})}) + "[health]\n" + lines({**FAST_HEALTH, **(health or {})}))
    return str(path)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One eagleeye-detector with fault injection, shared by a module's tests; each test leaves it healthy."""
    proc = start_detector("--fault-injection", "--config", fast_config(tmp_path_factory.mktemp("worker")))
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def no_frozen_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which any eagleeye process's event loop held itself past LOOP_LAG_LIMIT_MS.

    A test that freezes a process on purpose (SIGSTOP) is not failed for that process (`Proc.frozen`);
    `@pytest.mark.loop_lag_exempt(reason)` exempts a test whose load is meant to exceed the machine;
    with `programs=(...)`, only those programs' loops are exempt.
    """
    seen = {id(p): len(p.lags) for p in list(Proc.live)}
    stopped = len(Proc.stopped_lags)
    yield
    exempt = request.node.get_closest_marker("loop_lag_exempt")
    if exempt and "programs" not in exempt.kwargs:
        return
    lags = [(p.program, lag) for p in list(Proc.live) for lag in p.lags[seen.get(id(p), 0):]]
    lags += Proc.stopped_lags[stopped:]
    lags = [(program, lag) for program, lag in lags if not exempt or program not in exempt.kwargs["programs"]]
    over = [(program, lag) for program, lag in lags if float(lag["lag_ms"]) > LOOP_LAG_LIMIT_MS
            and float(lag["loop_cpu_ms"]) >= LOOP_HELD_SHARE * float(lag["lag_ms"])]
    assert not over, "event loop held: " + "; ".join(
        f"{program} {lag['lag_ms']} ms late, its loop on a core {lag['loop_cpu_ms']} ms of it "
        f"({lag['count']} times)" for program, lag in over)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    """What a test measured, for `make bench` (bench/hostile.py): appended as a JSON line to the file
    named by EAGLEEYE_FIGURES when that is set, whether the test passed or not."""
    found: dict[str, object] = {}
    yield found
    path = os.environ.get("EAGLEEYE_FIGURES")
    if path and found:
        with open(path, "a") as out:
            out.write(json.dumps({"test": request.node.name, **found}) + "\n")
