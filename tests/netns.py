"""A network namespace joined to the host by a veth pair, which a test or benchmark can cut off with a true
blackhole (every packet dropped, so connects time out instead of being refused) and then restore.

Needs root, `ip` (iproute2) and `iptables` (`make tools` installs it). Typical use::

    with NetNamespace() as ns:
        worker = Proc("eagleeye-detector", ["--listen", f"{ns.ns_ip}:0"], wrapper=ns.command([]))
        address = worker.wait_listening()      # "10.213.N.2:PORT", dialable from the root namespace
        ns.cut()                               # packets to and from the namespace vanish
        ns.restore()
        worker.stop()                          # the caller stops its processes before close()

Each instance gets its own namespace (`eagleeye-t-<pid>-<n>`), veth pair (`eev<pid%10000><n>h` on the
host, `...n` inside) and /30 subnet 10.213.N.0/30 (host .1, namespace .2). `cleanup_stale()` removes what
crashed runs left behind.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from types import TracebackType
from typing import Any

__all__ = ["PREFIX", "NetNamespace", "NetnsError", "cleanup_stale", "unavailable_reason"]

PREFIX = "eagleeye-t-"
VETH_PREFIX = "eev"
SUBNET_PREFIX = "10.213"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-(\d+)$")
_VETH = re.compile(rf"^{VETH_PREFIX}\d+[hn]$")
_RULE = re.compile(rf"^-A (INPUT|OUTPUT) (-i|-o) ({VETH_PREFIX}\d+h) -j DROP$")
_MAX_IFNAME = 15  # IFNAMSIZ - 1

_counter = itertools.count()
_lock = threading.Lock()
_octets_in_use: set[int] = set()  # third octets (10.213.N.0/30) held by this process's open instances


class NetnsError(RuntimeError):
    """A command of the harness failed; the message names the command and its stderr."""


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise NetnsError(f"`{shlex.join(argv)}`: {argv[0]} not found on PATH") from None
    except subprocess.CalledProcessError as e:
        stderr = (e.stderr or "").strip() or "(no stderr)"
        raise NetnsError(f"`{shlex.join(argv)}` failed with exit code {e.returncode}: {stderr}") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{shlex.join(argv)}` did not finish within {timeout} s") from None


def _succeeds(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def _iptables(*args: str) -> list[str]:
    return ["iptables", "-w", *args]  # -w: wait for the xtables lock rather than fail beside another caller


def unavailable_reason() -> str | None:
    """Why NetNamespace cannot work on this machine, or None when it can."""
    if os.geteuid() != 0:
        return f"network namespaces and iptables rules need root; running as uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return "the `ip` command (Debian package iproute2) is not on PATH"
    if shutil.which("iptables") is None:
        return "the `iptables` command (Debian package iptables; `make tools` installs it) is not on PATH"
    for probe in (["ip", "netns", "list"], _iptables("-S", "INPUT")):
        try:
            _run(probe)
        except NetnsError as e:
            return str(e)
    return None


def _namespaces() -> list[str]:
    # Lines read "NAME" or "NAME (id: N)".
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]


def _links() -> list[dict[str, Any]]:
    links: list[dict[str, Any]] = json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")
    return links


def _link_exists(name: str) -> bool:
    return _succeeds(["ip", "link", "show", "dev", name])


def _host_octets() -> set[int]:
    """Third octets of the 10.213.N.x addresses already on this (root) namespace's interfaces."""
    used: set[int] = set()
    for link in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for info in link.get("addr_info", []):
            parts = str(info.get("local", "")).split(".")
            if len(parts) == 4 and ".".join(parts[:2]) == SUBNET_PREFIX:
                used.add(int(parts[2]))
    return used


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_rule(chain: str, spec: list[str]) -> None:
    """Delete one rule; a rule that is already gone is fine."""
    try:
        _run(_iptables("-D", chain, *spec))
    except NetnsError:
        if _succeeds(_iptables("-C", chain, *spec)):
            raise


def _remove_drop_rules(veth: str) -> None:
    """Every `-i/-o veth -j DROP` rule of INPUT and OUTPUT (stale ones from a crashed run included)."""
    for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
        spec = [flag, veth, "-j", "DROP"]
        while _succeeds(_iptables("-C", chain, *spec)):
            _delete_rule(chain, spec)


class NetNamespace:
    """A network namespace with a veth link to the host; `cut()` blackholes it, `restore()` undoes that.

    Attributes: `name` (the namespace), `host_veth`/`ns_veth` (the pair's ends), `host_ip` (10.213.N.1,
    host side) and `ns_ip` (10.213.N.2, inside), `subnet` ("10.213.N.0/30"), `is_cut`.
    """

    def __init__(self) -> None:
        if (reason := unavailable_reason()) is not None:
            raise NetnsError(f"NetNamespace cannot work here: {reason}")
        pid = os.getpid()
        with _lock:
            while True:
                n = next(_counter)
                name, veth = f"{PREFIX}{pid}-{n}", f"{VETH_PREFIX}{pid % 10000}{n}"
                if name not in _namespaces() and not _link_exists(veth + "h") and not _link_exists(veth + "n"):
                    break
            used = _octets_in_use | _host_octets()
            octet = next((o for o in ((pid + n + i) % 256 for i in range(256)) if o not in used), None)
            if octet is None:
                raise NetnsError(f"every {SUBNET_PREFIX}.N.0/30 subnet is in use on this machine")
            _octets_in_use.add(octet)
        self.name = name
        self.host_veth, self.ns_veth = veth + "h", veth + "n"
        assert len(self.host_veth) <= _MAX_IFNAME, self.host_veth
        net = ipaddress.ip_network(f"{SUBNET_PREFIX}.{octet}.0/30")
        self.subnet = str(net)
        self.host_ip, self.ns_ip = str(net[1]), str(net[2])
        self._octet = octet
        self._rules: list[tuple[str, list[str]]] = []  # (chain, spec) that cut() inserted
        self._closed = False
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        _remove_drop_rules(self.host_veth)  # left by a crashed run that had the same name: they would cut us
        _run(["ip", "netns", "add", self.name])
        ns = ["ip", "-n", self.name]
        _run([*ns, "link", "set", "dev", "lo", "up"])
        # The peer is created inside the namespace, so the pair exists whole or not at all.
        _run(["ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", self.ns_veth, "netns", self.name])
        _run(["ip", "link", "set", "dev", self.host_veth, "alias", self.name])  # its owner, for cleanup_stale()
        _run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_veth])
        _run([*ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_veth])
        _run(["ip", "link", "set", "dev", self.host_veth, "up"])
        _run([*ns, "link", "set", "dev", self.ns_veth, "up"])

    def __repr__(self) -> str:
        return f"NetNamespace({self.name!r}, {self.host_veth} {self.host_ip} <-> {self.ns_veth} {self.ns_ip}, " \
               f"{'cut' if self.is_cut else 'connected'}{', closed' if self._closed else ''})"

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        return bool(self._rules)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: the pid is the program's own)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Drop every packet between the host and the namespace, both ways; idempotent."""
        if self._closed:
            raise NetnsError(f"{self.name}: cut() after close()")
        if self._rules:
            return
        try:
            for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
                spec = [flag, self.host_veth, "-j", "DROP"]
                _run(_iptables("-I", chain, *spec))
                self._rules.append((chain, spec))
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Remove exactly the rules cut() inserted; idempotent."""
        while self._rules:
            chain, spec = self._rules[-1]
            _delete_rule(chain, spec)
            self._rules.pop()

    def close(self) -> None:
        """Remove the rules, the veth pair and the namespace. Anything already gone is fine; kills nothing."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        try:
            self.restore()
        except NetnsError as e:
            errors.append(str(e))
        # The veth goes first and explicitly: a process still inside keeps the namespace (and so the pair)
        # alive after `ip netns del`.
        try:
            _run(["ip", "link", "del", "dev", self.host_veth])
        except NetnsError as e:
            if _link_exists(self.host_veth):
                errors.append(str(e))
        try:
            _run(["ip", "netns", "del", self.name])
        except NetnsError as e:
            if self.name in _namespaces():
                errors.append(str(e))
        with _lock:
            _octets_in_use.discard(self._octet)
        if errors:
            raise NetnsError(f"{self.name}: close() left something behind:\n" + "\n".join(errors))


def cleanup_stale() -> list[str]:
    """Remove the namespaces, veths and DROP rules that runs of this harness left behind when their process
    died (their pid no longer exists); returns what was removed. Live runs' resources are left alone."""
    removed: list[str] = []
    for link in _links():
        ifname, alias = str(link.get("ifname", "")), str(link.get("ifalias", ""))
        owner = _NAME.match(alias)
        if _VETH.match(ifname) and owner and not _pid_alive(int(owner.group(1))):
            try:
                _run(["ip", "link", "del", "dev", ifname])
                removed.append(f"veth {ifname}")
            except NetnsError:
                if _link_exists(ifname):
                    raise
    for name in _namespaces():
        owner = _NAME.match(name)
        if owner and not _pid_alive(int(owner.group(1))):
            try:
                _run(["ip", "netns", "del", name])
                removed.append(f"namespace {name}")
            except NetnsError:
                if name in _namespaces():
                    raise
    # Rules name interfaces, not links: a DROP rule for a veth that no longer exists is a leftover (a live
    # instance only has rules while its veth exists), and would cut a later instance given that name.
    for chain in ("INPUT", "OUTPUT"):
        for line in _run(_iptables("-S", chain)).stdout.splitlines():
            rule = _RULE.match(line.strip())
            if rule and not _link_exists(rule.group(3)):
                _delete_rule(chain, [rule.group(2), rule.group(3), "-j", "DROP"])
                removed.append(f"{chain} rule {rule.group(2)} {rule.group(3)} -j DROP")
    return removed
