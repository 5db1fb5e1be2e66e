"""Real eagleeye processes for integration tests: start on 127.0.0.1:0, learn the port from the log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Proc:
    """A child process whose JSON log lines on stderr are collected as they arrive."""

    def __init__(self, program: str, args: list[str], *, ready_event: str = "listening") -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen([str(BIN / program), *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._ready_event = ready_event
        self.address = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self.events.append(record)
                    if record.get("event") == self._ready_event and not self.address:
                        self.address = record["address"]
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_event(self, name: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """The first log event called `name` with these fields; fails after `timeout` s."""
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("event") == name and
                         all(e.get(k) == v for k, v in fields.items())), None)
        with self._changed:
            ok = self._changed.wait_for(lambda: found() is not None or self.popen.poll() is not None, timeout)
            hit = found()
        assert ok and hit is not None, f"no {name!r} event; exit {self.popen.poll()}; log:\n" + "\n".join(self.lines)
        return hit

    def wait_listening(self, timeout: float = 60.0) -> str:
        self.wait_for_event(self._ready_event, timeout)
        return self.address

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


def start_detector(*args: str) -> Proc:
    """An eagleeye-detector on an OS-assigned port of 127.0.0.1, listening."""
    proc = Proc("eagleeye-detector", ["--listen", "127.0.0.1:0", *args])
    proc.wait_listening()
    return proc


class HealthWatch:
    """Records every status a Watch stream delivers for one service name."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        self.statuses: list[int] = []
        self._cond = asyncio.Condition()
        self._call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for resp in self._call:
                async with self._cond:
                    self.statuses.append(resp.status)
                    self._cond.notify_all()
        except grpc.aio.AioRpcError:
            pass

    async def wait_for(self, status: int, timeout: float = 30.0, after: int = 0) -> int:
        """Wait until `status` is delivered at index >= `after`; returns its index."""
        def seen() -> bool:
            return status in self.statuses[after:]
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(seen), timeout)
        return self.statuses.index(status, after)

    def cancel(self) -> None:
        self._call.cancel()
        self._task.cancel()


async def check(channel: grpc.aio.Channel, service: str, timeout: float = 5.0) -> int:
    """One standard health Check."""
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout)
    return int(resp.status)
