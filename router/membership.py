"""Which workers exist: the configured addresses, with DNS names standing for every address they resolve to.

`--primary` and `--standby` list entries (HOST:PORT). An IP address is one worker. A DNS name is as
many workers as it resolves to (a Kubernetes headless Service: one address per ready pod), looked up
again every `RESOLVE_INTERVAL_S` and at once when a worker fails (a restarted pod comes back at
another address), so that workers join and leave without a restart of the router.

A pair stays a pair: one entry per role, each resolving to one address, gives the workers `primary`
and `standby`, dialled by the name as configured (gRPC resolves it, as before pools existed). As soon
as a role has several workers, every worker is named by role and address and dialled by address.

A failed lookup keeps what the name resolved to last (DNS trouble does not empty the pool; the
workers' health says whether they still serve); a name that resolves, to fewer addresses, shrinks it.
`plan` is the pure part: entries and lookups in, workers out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from eagleeye.common.cli import parse_host_port
from eagleeye.common.logs import event
from eagleeye.router.fleet import Backend, Role

log = logging.getLogger("eagleeye.router")

RESOLVE_INTERVAL_S = 5.0
RESOLVE_MIN_GAP_S = 0.5   # lookups asked for by failures: at most this often

Addresses = tuple[str, ...]   # "HOST:PORT" texts, sorted


@dataclass(frozen=True)
class Entry:
    """One configured address: an IP (one worker) or a DNS name (every address it resolves to)."""

    role: Role
    target: str

    @property
    def literal(self) -> bool:
        host = parse_host_port(self.role.value, self.target)[0]
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return True


def entries(primary: str, standby: str) -> list[Entry]:
    """The configured entries, in order (the settings are validated: no empty or duplicate entries)."""
    return [Entry(role, t.strip()) for role, text in ((Role.PRIMARY, primary), (Role.STANDBY, standby))
            for t in text.split(",") if t.strip()]


def plan(configured: Sequence[Entry], resolved: Mapping[Entry, Addresses]) -> dict[Backend, str]:
    """The workers and the address each is dialled at, from the entries and what their names resolve
    to now (an entry missing from `resolved` has never resolved: its name is dialled as it is)."""
    found: dict[Entry, Addresses] = {e: (e.target,) if e.literal else resolved.get(e, (e.target,))
                                     for e in configured}
    pooled = any(sum(1 for e in configured if e.role is role) > 1 or
                 sum(len(found[e]) for e in configured if e.role is role) > 1 for role in Role)
    out: dict[Backend, str] = {}
    for e in configured:
        if not pooled:
            out[Backend.PRIMARY if e.role is Role.PRIMARY else Backend.STANDBY] = e.target
            continue
        for address in found[e]:
            if address not in out.values():  # an address found twice (or under both roles) is one worker
                out[Backend.of(e.role, address, True)] = address
    return out


Lookup = Callable[[str, int], Awaitable[list[tuple[str, int]]]]


async def getaddrinfo(host: str, port: int) -> list[tuple[str, int]]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(str(info[4][0]), int(info[4][1])) for info in infos]


def _text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Membership:
    """Keeps the workers current: resolves the names now, every RESOLVE_INTERVAL_S and when poked."""

    def __init__(self, configured: Sequence[Entry], on_change: Callable[[dict[Backend, str]], None] | None = None,
                 lookup: Lookup = getaddrinfo) -> None:
        self._configured = list(configured)
        self.on_change = on_change   # called with the new workers whenever they change
        self._lookup = lookup
        self._resolved: dict[Entry, Addresses] = {}
        self._failing: set[Entry] = set()
        self._poke = asyncio.Event()
        self.members: dict[Backend, str] = plan(self._configured, {})

    def names(self) -> list[Entry]:
        return [e for e in self._configured if not e.literal]

    def poke(self) -> None:
        """A worker failed: look the names up again soon (a restarted pod may have a new address)."""
        self._poke.set()

    async def resolve(self) -> None:
        """Look every name up once and apply the result."""
        async def one(e: Entry) -> None:
            host, port = parse_host_port(e.role.value, e.target)
            try:
                found = tuple(sorted({_text(h, p) for h, p in await self._lookup(host, port)}))
            except OSError as err:
                if e not in self._failing:  # once per outage
                    event(log, "worker name lookup failed; keeping its last addresses", logging.WARNING,
                          role=e.role.value, host=e.target, error=str(err), kept=list(self._resolved.get(e, ())))
                self._failing.add(e)
                return
            self._failing.discard(e)
            if found and found != self._resolved.get(e):
                event(log, "worker name resolved", role=e.role.value, host=e.target, addresses=list(found))
                self._resolved[e] = found
            elif not found:
                self._resolved[e] = ()
        await asyncio.gather(*(one(e) for e in self.names()))
        members = plan(self._configured, self._resolved)
        if members != self.members:
            self.members = members
            if self.on_change is not None:
                self.on_change(members)

    async def run(self) -> None:
        """Resolve at once, then every RESOLVE_INTERVAL_S or when poked (at most every RESOLVE_MIN_GAP_S)."""
        if not self.names():
            return
        while True:
            self._poke.clear()   # a poke from now on (even during the lookup) asks for the next one
            await self.resolve()
            await asyncio.sleep(RESOLVE_MIN_GAP_S)  # a floor between lookups, not a synchronisation
            try:
                async with asyncio.timeout(RESOLVE_INTERVAL_S - RESOLVE_MIN_GAP_S):
                    await self._poke.wait()
            except TimeoutError:
                pass
