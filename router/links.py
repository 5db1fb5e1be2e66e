"""The router's connections to its workers, renewed when its client certificate files change.

Per backend there are three channels (health, unary calls, streams; see watcher.backend_channel).
With router-to-worker TLS, `run` looks at the CA, certificate and key files every few seconds; when
they change and hold a usable pair, it opens new channels and tells its listeners (the proxy, the
watchers), so new calls and reconnections use the new certificate. Calls already open finish on the
old connections: retired unary channels are closed after the longest deadline, stream channels after
`max_connection_age_grace_s` (the bound streams already have), health channels when the router stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc

from eagleeye.common.cli import ConfigError
from eagleeye.common.logs import event
from eagleeye.common.tls import FileWatch, check_client_files
from eagleeye.router.config import RouterConfig
from eagleeye.router.fleet import Backend
from eagleeye.router.watcher import backend_channel

log = logging.getLogger("eagleeye.router")

# How often the certificate files are looked at (a stat each): cert-manager renews days ahead.
RELOAD_INTERVAL_S = 5.0


class Links:
    """Channels to every worker; `subscribe` to hear when they are replaced."""

    def __init__(self, cfg: RouterConfig, backends: dict[Backend, str], interceptors: list[Any] | None = None) -> None:
        self._cfg = cfg
        self._interceptors = interceptors
        self._addresses = dict(backends)
        self._listeners: list[Callable[[], None]] = []
        self._retired_health: list[grpc.aio.Channel] = []
        self._closing: set[asyncio.Task[None]] = set()
        files = [p for p in (cfg.backend_tls_ca, cfg.backend_tls_cert, cfg.backend_tls_key) if p is not None]
        self._files = FileWatch(files) if files else None
        self.unary, self.stream, self.health = self._open()

    def _open(self) -> tuple[dict[Backend, grpc.aio.Channel], ...]:
        # Calls carry the trace; health probes (ten a second) stay out of it.
        unary = {b: backend_channel(a, self._cfg, self._interceptors) for b, a in self._addresses.items()}
        stream = {b: backend_channel(a, self._cfg, self._interceptors) for b, a in self._addresses.items()}
        health = {b: backend_channel(a, self._cfg) for b, a in self._addresses.items()}
        return unary, stream, health

    def addresses(self) -> dict[Backend, str]:
        return dict(self._addresses)

    def add(self, backend: Backend, address: str) -> None:
        """Channels to a worker that joined."""
        self._addresses[backend] = address
        self.unary[backend] = backend_channel(address, self._cfg, self._interceptors)
        self.stream[backend] = backend_channel(address, self._cfg, self._interceptors)
        self.health[backend] = backend_channel(address, self._cfg)

    def remove(self, backend: Backend) -> None:
        """A worker was removed: its channels close (what is still open on them gets its grace)."""
        self._addresses.pop(backend, None)
        for channels, grace in ((self.unary, self._cfg.default_deadline_s),
                                (self.stream, self._cfg.max_connection_age_grace_s), (self.health, 0.0)):
            channel = channels.pop(backend, None)
            if channel is not None:
                self._close_later(channel, grace)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` after the channels were replaced."""
        self._listeners.append(listener)

    def renew(self) -> None:
        """Open new channels (the certificate files as they are now); retire the old ones."""
        old_unary, old_stream, old_health = self.unary, self.stream, self.health
        self.unary, self.stream, self.health = self._open()
        for listener in self._listeners:
            listener()
        for ch in old_unary.values():
            self._close_later(ch, self._cfg.default_deadline_s)
        for ch in old_stream.values():
            self._close_later(ch, self._cfg.max_connection_age_grace_s)
        self._retired_health += old_health.values()

    def _close_later(self, channel: grpc.aio.Channel, grace_s: float) -> None:
        task = asyncio.create_task(channel.close(grace_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def run(self) -> None:
        """Renew the channels whenever the client certificate files change (and are usable)."""
        if self._files is None:
            return
        cfg = self._cfg
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_S)  # polling files: there is no portable change notification
            if not self._files.changed():
                continue
            try:
                check_client_files("backend_tls", cfg.backend_tls_ca, cfg.backend_tls_cert, cfg.backend_tls_key)
            except ConfigError as e:
                event(log, "backend certificate reload refused; keeping the previous one", logging.WARNING,
                      error=str(e))
                continue
            self.renew()
            event(log, "backend certificate reloaded", cert=str(cfg.backend_tls_cert or ""),
                  ca=str(cfg.backend_tls_ca))

    async def close(self) -> None:
        """Close every channel, retired ones included (calls still open are cancelled)."""
        for task in self._closing:
            task.cancel()
        for ch in (*self.unary.values(), *self.stream.values(), *self.health.values(), *self._retired_health):
            await ch.close()

