"""eagleeye-router: the Detector API in front of a primary and a hot standby, with health-driven failover."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from eagleeye.api.names import DETECTOR_SERVICE
from eagleeye.api.router.v1 import router_pb2, router_pb2_grpc
from eagleeye.common import grpcopts, settings, telemetry
from eagleeye.common.admission import Slots
from eagleeye.common.cli import OneLineParser, parse_host_port, probe_bind, run_service
from eagleeye.common.grpcguard import CallAdmission, guarded
from eagleeye.common.health import HealthServicer
from eagleeye.common.latency import BackendTimers
from eagleeye.common.logs import LOG_FORMATS, event
from eagleeye.common.loopbehind import LoopBehind
from eagleeye.common.looplag import LoopLagMonitor
from eagleeye.common.memory import return_large_buffers
from eagleeye.common.serving import (
    HEALTH_SERVICE,
    OWN_FILES,
    add_listener,
    health_server,
    raise_open_file_limit,
    serve_reflection,
)
from eagleeye.common.tls import ServerTls
from eagleeye.router import config as config_mod
from eagleeye.router.admin import AdminServicer
from eagleeye.router.adminaccess import ADMIN_MAX_CALLS, ADMIN_MAX_CALLS_PER_PEER, ADMIN_REQUEST_TIMEOUT_S
from eagleeye.router.config import RouterConfig
from eagleeye.router.controller import Controller
from eagleeye.router.fleet import Backend
from eagleeye.router.links import Links
from eagleeye.router.membership import Membership, entries
from eagleeye.router.proxy import Proxy
from eagleeye.router.watcher import BackendWatcher
from eagleeye.router.xds.server import XdsPublisher

log = logging.getLogger("eagleeye.router")
PROG = "eagleeye-router"
ADMIN_TOKEN_ENV = settings.env_name("admin_token")
ADMIN_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterAdmin"].full_name


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__, add_version=True,
                      epilog="Settings not given as flags come from --config (TOML), then defaults; "
                             "see docs/router.md.")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address clients call (port 0: any free port; \"\": no proxy, a control plane only)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free port)")
    p.add_argument("--health-listen", metavar="HOST:PORT",
                   help="also serve grpc.health.v1 alone, in plaintext, here (for kubelet probes when --listen is TLS)")
    p.add_argument("--admin-listen", metavar="HOST:PORT",
                   help="serve the admin API (state, events, drain, switch) here, and only here; needs an admin "
                        "token (default: no admin API)")
    p.add_argument("--xds-listen", metavar="HOST:PORT",
                   help="serve the routing decisions over xDS (ADS) here, for gRPC clients that dial "
                        "xds:///NAME and call the workers directly (zero-hop mode; docs/zero-hop.md)")
    p.add_argument("--xds-name", metavar="NAME",
                   help="the name xDS clients dial, xds:///NAME (default eagleeye-detector)")
    p.add_argument("--tls-cert", metavar="FILE", type=Path,
                   help="serve TLS (on --listen, --admin-listen and --xds-listen) with this PEM certificate (chain)")
    p.add_argument("--tls-key", metavar="FILE", type=Path, help="... and this PEM private key")
    p.add_argument("--tls-client-ca", metavar="FILE", type=Path,
                   help="require client certificates signed by this PEM CA (mTLS)")
    p.add_argument("--primary", metavar="HOST:PORT[,...]",
                   help="the primary detector worker, or a pool of them, comma-separated (docs/router.md#pools)")
    p.add_argument("--standby", metavar="HOST:PORT[,...]",
                   help="the hot standby detector worker, or a pool of them, comma-separated")
    p.add_argument("--backend-tls-ca", metavar="FILE", type=Path,
                   help="dial the workers over TLS, trusting this PEM CA")
    p.add_argument("--backend-tls-cert", metavar="FILE", type=Path,
                   help="client certificate (PEM) the router shows the workers (mTLS)")
    p.add_argument("--backend-tls-key", metavar="FILE", type=Path, help="... and its PEM private key")
    p.add_argument("--backend-tls-server-name", metavar="NAME",
                   help="the name the workers' certificates must carry (default: the host in --primary/--standby)")
    p.add_argument("--weights", metavar="P,S", help="traffic split in NORMAL, percent (default 95,5)")
    p.add_argument("--request-default", action="append", metavar="STATE:FIELD=VALUE", dest="request_default",
                   help="in router state STATE, fill FIELD of requests that leave it unset, e.g. "
                        "FAILOVER:score_threshold=0.4 (repeatable; replaces the file's request_defaults)")
    p.add_argument("--hold-down", type=float, metavar="S", dest="hold_down_s",
                   help="how long a recovered primary must stay ready before traffic ramps back (default 10)")
    p.add_argument("--ramp", type=float, metavar="S", dest="ramp_s",
                   help="how long the ramp back to the primary takes (default 30)")
    p.add_argument("--admin-token", metavar="TOKEN",
                   help="credential for maintenance actions (drain, switch), at least 32 bytes (openssl rand "
                        f"-hex 32); better: set {ADMIN_TOKEN_ENV}, which `ps` does not show")
    p.add_argument("--config", metavar="FILE", type=Path, help="a TOML file with any of the settings")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=list(LOG_FORMATS),
                   help="log lines as JSON or as text (default auto: text on a terminal, JSON otherwise)")
    return p


def client_connection_options(cfg: RouterConfig) -> list[tuple[str, int]]:
    """Keepalive enforcement and a maximum connection age for the clients' connections."""
    return [
        # Pings more often than this (with or without calls) earn a strike; two strikes: GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", int(cfg.keepalive_min_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
        # GOAWAY after this age (gRPC adds +-10 % jitter): new calls reconnect, possibly to another
        # replica; calls in flight get the grace period to end.
        ("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(cfg.max_connection_age_grace_s * 1000)),
        # Without BDP probing a stream's receive window stays at 64 KiB: what a client sends before the
        # router reads it waits in the client, not in the router (gRPC still opens the window for a
        # message the router has started to read, so large frames are not slowed).
        ("grpc.http2.bdp_probe", 0),
        # A connection carries at most what one client may hold (its own calls, streams and Watches).
        *grpcopts.streams_per_connection(cfg.max_concurrent_rpcs_per_peer + cfg.max_concurrent_streams_per_peer
                                         + cfg.max_watch_streams_per_peer),
    ]


FIRST_LOOKUP_S = 5.0   # the workers' names looked up before serving, at most this long


def _bound(field: str, address: str, port: int) -> str:
    return f"{parse_host_port(field, address)[0]}:{port}"


async def serve(cfg: RouterConfig) -> int:
    loop = asyncio.get_running_loop()
    return_large_buffers()
    if cfg.listen:
        host, wanted = parse_host_port("listen", cfg.listen)
        probe_bind("listen", host, wanted)
    tel = telemetry.setup("eagleeye-router", cfg.listen or cfg.xds_listen, cfg.metrics_listen or None)
    tls = ServerTls.of(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    health = HealthServicer(cfg.max_watch_streams, cfg.max_watch_streams_per_peer)
    # The workers: the configured addresses, DNS names looked up once before starting (each is as many
    # workers as it resolves to), then again on an interval and on failures (router/membership.py).
    membership = Membership(entries(cfg.primary, cfg.standby))
    try:
        async with asyncio.timeout(FIRST_LOOKUP_S):
            await membership.resolve()
    except TimeoutError:
        event(log, "worker name lookup slow; starting with the names as configured", logging.WARNING)
    backends = dict(membership.members)
    links = Links(cfg, backends, tel.client_interceptors() if tel.tracing else None)

    def new_timers() -> BackendTimers:
        return BackendTimers(cfg.hedge_quantile, (cfg.hedge_delay_min_s, cfg.hedge_delay_max_s),
                             cfg.stall_multiplier, (cfg.stall_min_s, cfg.stall_max_s))

    behind = LoopBehind()  # when the router's own loop ran late: the watchers' Checks and the calls' timers
    watchers = {backend: BackendWatcher(backend.value, address, links.health[backend], cfg, behind=behind)
                for backend, address in backends.items()}
    timers = {b: new_timers() for b in backends}
    controller = Controller(cfg.policy(), watchers, health, timers, tel.meter,  # subscribes to the watchers
                            behind=behind)
    controller.on_failure(lambda _: membership.poke())  # a restarted pod may be back at another address

    servers: dict[str, tuple[grpc.aio.Server, str]] = {}  # what listens where, by setting
    listeners = sum(bool(a) for a in (cfg.listen, cfg.health_listen, cfg.xds_listen, cfg.admin_listen))
    raise_open_file_limit(listeners * cfg.max_connections + OWN_FILES)
    proxy: Proxy | None = None
    if cfg.listen:
        server = grpc.aio.server(options=[*grpcopts.SERVER_BASE_OPTIONS,
                                          *grpcopts.message_size_options(cfg.max_message_bytes),
                                          *client_connection_options(cfg),
                                          *grpcopts.connection_cap(cfg.max_connections)],
                                 interceptors=tel.server_interceptors())
        servers["listen"] = server, _bound("listen", cfg.listen, add_listener(server, "listen", cfg.listen, tls))
        health_pb2_grpc.add_HealthServicer_to_server(health, guarded(server))
        proxy = Proxy(cfg, controller, links.unary, links.stream, tracing=tel.tracing)
        server.add_generic_rpc_handlers((proxy.handler(),))
        serve_reflection(server, DETECTOR_SERVICE, HEALTH_SERVICE)
        links.subscribe(lambda: proxy.use_channels(links.unary, links.stream))

    def renewed() -> None:
        for backend, watcher in controller.watchers.items():
            watcher.use_channel(links.health[backend])
    links.subscribe(renewed)

    def members_changed(members: dict[Backend, str]) -> None:
        for backend in set(controller.watchers) - set(members):
            controller.retire(backend)  # removed once idle (on_removed below)
        for backend, address in members.items():
            if backend in controller.watchers:  # present, or leaving and back in the lookup: it stays
                controller.add(backend, controller.watchers[backend], controller.timers[backend])
                continue
            links.add(backend, address)
            watcher = BackendWatcher(backend.value, address, links.health[backend], cfg, behind=behind)
            controller.add(backend, watcher, new_timers())
            watcher.start()
            event(log, "worker joined", backend=backend.value, address=address)
        channels_changed()

    def channels_changed() -> None:
        if proxy is not None:
            proxy.use_channels(links.unary, links.stream)
        if publisher is not None:
            publisher.set_targets(links.addresses())

    stopping: set[asyncio.Task[None]] = set()

    def removed(backend: Backend, watcher: BackendWatcher) -> None:
        links.remove(backend)
        channels_changed()
        task = asyncio.create_task(watcher.stop())
        stopping.add(task)
        task.add_done_callback(stopping.discard)

    controller.on_removed(removed)
    membership.on_change = members_changed
    if cfg.health_listen:
        probes, health_port = health_server(health, cfg.health_listen, cfg.max_watch_streams_per_peer,
                                            cfg.max_connections)
        servers["health_listen"] = probes, _bound("health_listen", cfg.health_listen, health_port)
    xds_tasks: list[asyncio.Task[None]] = []
    publisher: XdsPublisher | None = None
    if cfg.xds_listen:
        # Its own server: ADS streams are long-lived and few, and a client port's limits do not fit them.
        # Without BDP probing gRPC keeps each stream's receive window at 64 KiB: a client that writes
        # requests faster than they are handled has at most that much waiting in the router for it.
        xds_server = grpc.aio.server(options=[*grpcopts.SERVER_BASE_OPTIONS,
                                              ("grpc.max_receive_message_length", 1024 * 1024),
                                              ("grpc.http2.bdp_probe", 0),
                                              *grpcopts.connection_cap(cfg.max_connections),
                                              *grpcopts.streams_per_connection(cfg.xds_max_clients_per_peer
                                                                               + cfg.max_watch_streams_per_peer)])
        publisher = XdsPublisher(controller, cfg.xds_name, backends,
                                 cfg.xds_num_retries, cfg.xds_max_clients, tel.meter,
                                 max_clients_per_peer=cfg.xds_max_clients_per_peer)
        xds_server.add_generic_rpc_handlers((publisher.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(health, guarded(xds_server))
        servers["xds_listen"] = xds_server, _bound("xds_listen", cfg.xds_listen,
                                                   add_listener(xds_server, "xds_listen", cfg.xds_listen, tls))
    if cfg.admin_listen:
        # A server of its own: network policy can keep clients away from it, and the data path's
        # limits and interceptors do not apply to operators.
        admin = grpc.aio.server(options=[*grpcopts.SERVER_BASE_OPTIONS, ("grpc.max_receive_message_length", 65536),
                                         *grpcopts.connection_cap(cfg.max_connections)],
                                maximum_concurrent_rpcs=ADMIN_MAX_CALLS)
        servicer = AdminServicer(controller, cfg.admin_token, cfg.admin_limits(), publisher)
        calls = CallAdmission(Slots(ADMIN_MAX_CALLS, ADMIN_MAX_CALLS_PER_PEER), ADMIN_REQUEST_TIMEOUT_S, "admin calls",
                              f"at most {ADMIN_MAX_CALLS_PER_PEER} per client",
                              f"at most {ADMIN_MAX_CALLS} in all")
        router_pb2_grpc.add_RouterAdminServicer_to_server(servicer, guarded(admin, calls))
        serve_reflection(admin, ADMIN_SERVICE)
        servers["admin_listen"] = admin, _bound("admin_listen", cfg.admin_listen,
                                                add_listener(admin, "admin_listen", cfg.admin_listen, tls))

    for server, _ in servers.values():
        await server.start()
    for w in watchers.values():
        w.start()
    controller_task = asyncio.create_task(controller.run())
    membership_task = asyncio.create_task(membership.run())
    lag = LoopLagMonitor("router", tel.meter, on_wake=controller.woke)  # a loop behind blames no backend
    lag.start()
    links_task = asyncio.create_task(links.run())
    if publisher is not None:
        xds_tasks.append(asyncio.create_task(publisher.run()))
    bound = {name: address for name, (_, address) in servers.items()}
    event(log, "listening", address=bound.get("listen"), metrics=tel.metrics_address, primary=cfg.primary,
          standby=cfg.standby, weights=list(cfg.weights), hold_down_s=cfg.hold_down_s, ramp_s=cfg.ramp_s,
          tls="mTLS" if tls and tls.client_ca else "TLS" if tls else "off",
          backend_tls="mTLS" if cfg.backend_tls_cert else "TLS" if cfg.backend_tls_ca else "off",
          health=bound.get("health_listen"), admin=bound.get("admin_listen"), xds=bound.get("xds_listen"),
          xds_name=cfg.xds_name if publisher else None)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # What start-up made (modules, protobuf descriptors, gRPC's objects: some 40,000) lives as long as
    # the process: out of the collector's way, a full collection during a burst of new streams scans
    # only what the streams made.
    gc.collect()
    gc.freeze()
    await stop.wait()

    event(log, "draining", grace_s=cfg.shutdown_grace_s, streams=controller.active_streams)
    await health.enter_graceful_shutdown()
    if proxy is not None:
        await proxy.drain()  # streams answer what they read, then end UNAVAILABLE: their clients reconnect
    for task in xds_tasks:
        task.cancel()
    if "xds_listen" in servers:
        # xDS clients keep the configuration they have and reconnect (to another replica, or to this one
        # restarted): their calls do not wait for the proxy's grace period.
        await servers.pop("xds_listen")[0].stop(None)
    if "listen" in servers:
        await servers.pop("listen")[0].stop(cfg.shutdown_grace_s)
    for server, _ in servers.values():
        await server.stop(None)
    controller_task.cancel()
    membership_task.cancel()
    links_task.cancel()
    await lag.stop()
    for w in controller.watchers.values():
        await w.stop()
    await links.close()
    event(log, "stopped", frames_read=proxy.frames_read if proxy else 0,
          frames_answered=proxy.frames_answered if proxy else 0, switches=dict(controller.switches),
          retries=controller.retries, hedges=controller.hedges, stream_migrations=controller.stream_migrations,
          replayed_frames=controller.replayed_frames)
    tel.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def make_config() -> RouterConfig:
        flags = {k: v for k, v in vars(args).items() if k not in ("config", "weights", "request_default")}
        if args.weights is not None:
            flags["weights"] = config_mod.parse_weights(args.weights)
        if args.request_default:
            flags["request_defaults"] = config_mod.parse_request_defaults(args.request_default)
        # EAGLEEYE_ADMIN_TOKEN (like every setting's variable) keeps the secret out of `ps`.
        return config_mod.load(args.config, flags, os.environ)

    return run_service(PROG, make_config, serve)


if __name__ == "__main__":
    sys.exit(main())
