"""Local eagleeye processes for the demo, benchmarks and tests: each listens on a port the OS picks
and names it in its `listening` log line, which is how callers learn the address."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


class Proc:
    """A child eagleeye process whose JSON log lines on stderr are collected as they arrive."""

    def __init__(self, program: str, args: list[str], *, ready_event: str = "listening") -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.program = program
        self.popen = subprocess.Popen([str(BIN / program), *args], stdout=subprocess.DEVNULL,
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
        if not ok or hit is None:
            raise RuntimeError(f"{self.program}: no {name!r} event within {timeout} s "
                               f"(exit code {self.popen.poll()}); its log:\n" + "\n".join(self.lines[-30:]))
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
