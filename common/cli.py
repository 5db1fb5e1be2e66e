"""Command-line plumbing shared by the services: one-line errors with exit code 2, addresses."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import ipaddress
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, Protocol, TypeVar


class _Logged(Protocol):
    @property
    def log_level(self) -> str: ...

    @property
    def log_format(self) -> str: ...


C = TypeVar("C", bound=_Logged)


class ConfigError(ValueError):
    """An invalid setting: the message names the field, the value and the rule."""


def version() -> str:
    """The installed distribution's version (pyproject.toml), or a note that there is none."""
    try:
        return importlib.metadata.version("eagleeye")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit code 2; `--version` on top-level
    parsers."""

    def __init__(self, *args: Any, add_version: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if add_version:
            self.add_argument("--version", action="version", version=f"%(prog)s {version()}")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail_config(prog: str, err: ConfigError) -> NoReturn:
    """Report an invalid configuration as one line and exit 2."""
    sys.stderr.write(f"{prog}: invalid configuration: {err}\n")
    sys.exit(2)


def parse_host_port(field: str, value: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); port 0 asks the OS for a free one."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{field}={value!r}: must be HOST:PORT, e.g. 127.0.0.1:50051")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{field}={value!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{field}={value!r}: port must be in 0..65535")
    return host.strip("[]"), port


def is_loopback(host: str) -> bool:
    """Whether HOST names only this machine (a loopback address literal, or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe_bind(field: str, host: str, port: int) -> None:
    """Fail with one clear line if HOST:PORT cannot be bound (gRPC's own report is a multi-line log)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"{field}={host}:{port}: cannot resolve {host!r} ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        # As gRPC does: a port left in TIME_WAIT is free; one with a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ConfigError(f"{field}={host}:{port}: cannot bind ({e.strerror}); "
                              "is another server on this port?") from None


def run_service(prog: str, make_config: Callable[[], C], serve: Callable[[C], Coroutine[object, object, int]]) -> int:
    """Build the config (exit 2 with one line if invalid), set up logs, serve until stopped."""
    from eagleeye.common.logs import setup

    try:
        cfg = make_config()
    except ConfigError as e:
        fail_config(prog, e)
    setup(cfg.log_level, cfg.log_format)
    try:
        return asyncio.run(serve(cfg))
    except ConfigError as e:  # found while starting: a port in use, a device that is not there
        fail_config(prog, e)
