"""Local eagleeye processes for the demo, benchmarks and tests: each listens on a port the OS picks
and names it in its `listening` log line, which is how callers learn the address."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, ClassVar

BIN = Path(sys.executable).parent


class Proc:
    """A child eagleeye process whose JSON log lines on stderr are collected as they arrive.

    `wrapper` is prepended to the command line, e.g. `NetNamespace.command([])` (tests/netns.py) to run the
    program inside a network namespace; the wrapper should exec the program, so signals reach it.

    Every `event loop lag` line the process logs is kept in `lags` (never forgotten), unless it was
    SIGSTOPped (`frozen`: its loop lagged because it was stopped); the test suite fails a test during
    which a process's loop lagged (tests/conftest.py). `live` holds the processes not yet collected, and
    `stopped_lags` the lags of every process stopped so far.
    """

    live: ClassVar[weakref.WeakSet[Proc]] = weakref.WeakSet()
    stopped_lags: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, program: str, args: list[str], *, ready_event: str = "listening",
                 wrapper: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.program = program
        self.popen = subprocess.Popen([*(wrapper or []), str(BIN / program), *args], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._ready_event = ready_event
        self.address = ""
        self.lags: list[dict[str, Any]] = []
        self.frozen = False
        Proc.live.add(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

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
                    if record.get("event") == "event loop lag" and not self.frozen:
                        self.lags.append(record)
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

    def forget_events(self) -> None:
        """Drop the events seen so far, so the next wait_for_event sees only what happens from now on."""
        with self._changed:
            self.events.clear()

    def wait_listening(self, timeout: float = 60.0) -> str:
        self.wait_for_event(self._ready_event, timeout)
        return self.address

    def signal(self, sig: int) -> None:
        if sig == signal.SIGSTOP:
            self.frozen = True
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
        self._reader.join(10)  # every line the process wrote is in `events` before stop() returns
        Proc.stopped_lags.extend((self.program, lag) for lag in self.lags)
        self.lags = []
        return self.popen.returncode


class LocalCluster:
    """A primary and a standby worker and a router, all on 127.0.0.1, as the demo, benchmarks and tests use.

    The workers keep their ports across restarts, so the router sees the same backend come back.
    `primary_wrapper` and `primary_listen` start the primary otherwise, e.g. inside a network namespace
    (tests/netns.py): `primary_wrapper=ns.command([]), primary_listen=f"{ns.ns_ip}:0"`; restarts keep both.
    The router serves its admin API on a port of its own, `admin_address`, with `admin_token` (given to
    it in the environment, as EAGLEEYE_ADMIN_TOKEN). With `xds_listen` it also serves xDS (zero-hop
    mode) there, `xds_address` once bound; a restarted router listens on the same address.
    """

    def __init__(self, worker_args: list[str] | None = None, router_args: list[str] | None = None, *,
                 primary_wrapper: list[str] | None = None, primary_listen: str = "127.0.0.1:0",
                 admin_token: str = "", xds_listen: str = "") -> None:
        self.worker_args = worker_args or []
        self.router_args = router_args or []
        self.primary_wrapper = primary_wrapper
        self.admin_token = admin_token or secrets.token_hex(16)
        self.admin_address = "127.0.0.1:0"
        self.xds_address = xds_listen
        started: list[Proc] = []
        try:  # a process that fails to start does not leave the others running
            self.primary = self._worker("primary", primary_listen, primary_wrapper)
            started.append(self.primary)
            self.standby = self._worker("standby", "127.0.0.1:0")
            started.append(self.standby)
            self.primary_address = self.primary.wait_listening()
            self.standby_address = self.standby.wait_listening()
            self.router = self._router("127.0.0.1:0")
            started.append(self.router)
            self.router_address = self.router.wait_listening()
            listening = self.router.wait_for_event("listening")
            self.admin_address = listening["admin"]
            self.xds_address = listening["xds"] or ""
        except BaseException:
            for proc in started:
                if proc.popen.poll() is None:
                    proc.popen.kill()
                proc.stop()
            raise

    def _worker(self, name: str, listen: str, wrapper: list[str] | None = None) -> Proc:
        return Proc("eagleeye-detector", ["--listen", listen, "--worker-id", name, *self.worker_args],
                    wrapper=wrapper)

    def _router(self, listen: str) -> Proc:
        xds = ["--xds-listen", self.xds_address] if self.xds_address else []
        return Proc("eagleeye-router", ["--listen", listen, "--admin-listen", self.admin_address, *xds,
                                        "--primary", self.primary_address, "--standby", self.standby_address,
                                        *self.router_args], env={"EAGLEEYE_ADMIN_TOKEN": self.admin_token})

    @property
    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata that authorizes admin actions."""
        return (("authorization", f"Bearer {self.admin_token}"),)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until both workers have their model loaded."""
        for worker in (self.primary, self.standby):
            worker.wait_for_event("model ready", timeout)

    def wait_normal(self, timeout: float = 120.0) -> None:
        """Until both workers are warm and the router has both in service (state NORMAL)."""
        self.wait_ready(timeout)
        self.router.wait_for_event("switch", timeout, to_state="NORMAL")

    def restart_primary(self) -> Proc:
        """Start the primary again on its old port (after it was killed or stopped)."""
        self.primary.stop()
        self.primary = self._worker("primary", self.primary_address, self.primary_wrapper)
        self.primary.wait_listening()
        return self.primary

    def restart_router(self) -> Proc:
        """Stop the router and start a new one on the same port."""
        self.router.stop()
        self.router = self._router(self.router_address)
        self.router.wait_listening()
        return self.router

    def stop(self) -> None:
        for proc in (self.router, self.primary, self.standby):
            if proc.popen.poll() is None:
                try:
                    proc.popen.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
                except ProcessLookupError:
                    pass
            proc.stop()
