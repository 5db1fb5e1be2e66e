"""Shared fixtures: a fault-injectable worker with fast health timings, started once per module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, start_detector

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
