"""eagleeye-router: the Detector API in front of a primary and a hot standby, with health-driven failover."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2_grpc

from common import grpcopts, telemetry
from common.cli import ConfigError, OneLineParser, parse_host_port, probe_bind, run_service
from common.grpcguard import guarded
from common.logs import event
from eagleeye.router.v1 import router_pb2_grpc
from router import config as config_mod
from router.admin import AdminServicer
from router.config import RouterConfig
from router.controller import Controller
from router.fleet import Backend
from router.latency import BackendTimers
from router.proxy import Proxy
from router.watcher import BackendWatcher, backend_channel

log = logging.getLogger("eagleeye.router")
PROG = "eagleeye-router"
ADMIN_TOKEN_ENV = "EAGLEEYE_ADMIN_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__,
                      epilog="Settings not given as flags come from --config (TOML), then defaults; "
                             "see docs/router.md.")
    p.add_argument("--listen", metavar="HOST:PORT", help="address clients call (port 0: any free port)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free port)")
    p.add_argument("--primary", metavar="HOST:PORT", help="the primary detector worker")
    p.add_argument("--standby", metavar="HOST:PORT", help="the hot standby detector worker")
    p.add_argument("--weights", metavar="P,S", help="traffic split in NORMAL, percent (default 95,5)")
    p.add_argument("--hold-down", type=float, metavar="S", dest="hold_down_s",
                   help="how long a recovered primary must stay ready before traffic ramps back (default 10)")
    p.add_argument("--ramp", type=float, metavar="S", dest="ramp_s",
                   help="how long the ramp back to the primary takes (default 30)")
    p.add_argument("--admin-token", metavar="TOKEN",
                   help=f"credential for maintenance actions (drain, switch); or set {ADMIN_TOKEN_ENV}")
    p.add_argument("--config", metavar="FILE", type=Path, help="a TOML file with any of the settings")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


async def serve(cfg: RouterConfig) -> int:
    loop = asyncio.get_running_loop()
    host, wanted = parse_host_port("listen", cfg.listen)
    probe_bind("listen", host, wanted)
    tel = telemetry.setup("eagleeye-router", cfg.listen, cfg.metrics_listen or None)
    server = grpc.aio.server(options=[*grpcopts.SERVER_BASE_OPTIONS,
                                      *grpcopts.message_size_options(cfg.max_message_bytes)],
                             interceptors=tel.server_interceptors())
    try:
        port = server.add_insecure_port(cfg.listen)
    except RuntimeError:
        raise ConfigError(f"listen={cfg.listen!r}: cannot bind; is another server on this port?") from None

    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, guarded(server))
    watchers: dict[Backend, BackendWatcher] = {}
    unary_channels: dict[Backend, grpc.aio.Channel] = {}
    stream_channels: dict[Backend, grpc.aio.Channel] = {}
    for backend, address in ((Backend.PRIMARY, cfg.primary), (Backend.STANDBY, cfg.standby)):
        # A connection each for health, unary calls and streams (see backend_channel). Calls carry the
        # trace; health probes (ten a second) stay out of it.
        interceptors = tel.client_interceptors() if tel.tracing else None
        unary_channels[backend] = backend_channel(address, cfg, interceptors)
        stream_channels[backend] = backend_channel(address, cfg, interceptors)
        watchers[backend] = BackendWatcher(backend.value, address, backend_channel(address, cfg), cfg)
    timers = {b: BackendTimers(cfg.hedge_quantile, (cfg.hedge_delay_min_s, cfg.hedge_delay_max_s),
                               cfg.stall_multiplier, (cfg.stall_min_s, cfg.stall_max_s)) for b in Backend}
    controller = Controller(cfg.policy(), watchers, health, timers, tel.meter)  # subscribes to the watchers
    proxy = Proxy(cfg, controller, unary_channels, stream_channels, tracing=tel.tracing)
    server.add_generic_rpc_handlers((proxy.handler(),))
    router_pb2_grpc.add_RouterAdminServicer_to_server(AdminServicer(controller, cfg.admin_token), guarded(server))

    await server.start()
    for w in watchers.values():
        w.start()
    controller_task = asyncio.create_task(controller.run())
    event(log, "listening", address=f"{host}:{port}", metrics=tel.metrics_address, primary=cfg.primary,
          standby=cfg.standby,
          weights=list(cfg.weights), hold_down_s=cfg.hold_down_s, ramp_s=cfg.ramp_s,
          admin_actions="enabled" if cfg.admin_token else "disabled")

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    event(log, "draining", grace_s=cfg.shutdown_grace_s, streams=controller.active_streams)
    await health.enter_graceful_shutdown()
    await server.stop(cfg.shutdown_grace_s)
    controller_task.cancel()
    for w in watchers.values():
        await w.stop()
        await w.channel.close()
    for ch in (*unary_channels.values(), *stream_channels.values()):
        await ch.close()
    event(log, "stopped", switches=dict(controller.switches), retries=controller.retries, hedges=controller.hedges,
          stream_migrations=controller.stream_migrations, replayed_frames=controller.replayed_frames)
    tel.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def make_config() -> RouterConfig:
        flags = {k: v for k, v in vars(args).items() if k not in ("config", "weights")}
        if flags.get("admin_token") is None and os.environ.get(ADMIN_TOKEN_ENV):
            flags["admin_token"] = os.environ[ADMIN_TOKEN_ENV]  # keeps the secret out of `ps`
        if args.weights is not None:
            flags["weights"] = config_mod.parse_weights(args.weights)
        return config_mod.load(args.config, flags)

    return run_service(PROG, make_config, serve)


if __name__ == "__main__":
    sys.exit(main())
