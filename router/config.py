"""The router's configuration: one frozen, validated object built from a TOML file and flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eagleeye.api import names
from eagleeye.common import settings, tls
from eagleeye.common.cli import ConfigError, parse_host_port
from eagleeye.common.logs import LOG_FORMATS
from eagleeye.router import requestpolicy
from eagleeye.router.adminaccess import MAX_ANONYMOUS_STREAMS, MAX_ANONYMOUS_STREAMS_PER_PEER, AdminLimits
from eagleeye.router.budget import BudgetConfig
from eagleeye.router.fleet import RequestCost
from eagleeye.router.policy import PolicyConfig
from eagleeye.router.stream import StreamConfig
from eagleeye.router.unary import UnaryConfig

_U, _S, _B = UnaryConfig, StreamConfig, BudgetConfig  # the data path's defaults live beside its rules

LOG_LEVELS = ("debug", "info", "warning", "error")
# 32 bytes: 128 bits or more from `openssl rand -hex 32` (or -hex 16), beyond guessing at any rate.
ADMIN_TOKEN_MIN_BYTES = 32


@dataclass(frozen=True)
class RouterConfig:
    """Everything a router needs; see `eagleeye-router --help` and docs/router.md."""

    listen: str = "127.0.0.1:50050"     # "": no proxy (a control plane only, with xds_listen)
    metrics_listen: str = ""            # HOST:PORT for Prometheus /metrics; "": none
    health_listen: str = ""             # HOST:PORT, plaintext, grpc.health.v1 only (kubelet probes); "": none
    admin_listen: str = ""              # HOST:PORT of the admin service (needs admin_token); "": no admin service
    xds_listen: str = ""                # HOST:PORT of the xDS control plane (ADS, zero-hop mode); "": none
    xds_name: str = "eagleeye-detector"  # the resource name clients dial: xds:///NAME
    xds_num_retries: int = 2            # the route's retries of UNAVAILABLE calls on xDS clients
    xds_max_clients: int = 1000         # ADS streams at once
    xds_max_clients_per_peer: int = 100  # ... from one client (address; with mTLS, identity at that address)
    tls_cert: Path | None = None        # with tls_key: TLS on `listen` and `admin_listen`
    tls_key: Path | None = None
    tls_client_ca: Path | None = None   # require client certificates signed by this CA (mTLS)
    primary: str = ""
    standby: str = ""
    backend_tls_ca: Path | None = None  # dial the workers over TLS, trusting this CA
    backend_tls_cert: Path | None = None  # with backend_tls_key: the router's client certificate (mTLS)
    backend_tls_key: Path | None = None
    backend_tls_server_name: str = ""   # name to check in the workers' certificates; "": their host
    weights: tuple[float, float] = (95.0, 5.0)
    degraded_weights: tuple[float, float] = (50.0, 50.0)
    hold_down_s: float = 10.0
    hold_down_max_s: float = 300.0
    hold_down_multiplier: float = 2.0
    hold_down_reset_s: float = 300.0
    healthy_checks: int = 5
    ramp_s: float = 30.0
    degraded_recover_s: float = 5.0
    degraded_recover_max_s: float = 120.0
    # A hung backend keeps its connection and goes quiet on Watch; only an active Check with a short
    # deadline sees it. Measured Check round trips here: ~1 ms median, 14 ms worst under saturation.
    check_interval_s: float = 0.2
    check_timeout_s: float = 0.25
    check_failures: int = 2             # consecutive failed Checks: the backend is not ready
    per_try_timeout_s: float = _U.per_try_timeout_s  # a unary try on a hung backend is abandoned after this
    hedge_quantile: float = _U.hedge_quantile        # hedge delay: this quantile of the backend's latency ...
    hedge_delay_min_s: float = _U.hedge_delay_min_s  # ... within these bounds
    hedge_delay_max_s: float = _U.hedge_delay_max_s
    retry_budget_ratio: float = _B.ratio             # hedges + retries: at most this share of calls ...
    retry_budget_min_per_s: float = _B.min_per_s     # ... or this many per second
    retry_budget_window_s: float = _B.window_s
    default_deadline_s: float = 30.0    # for clients that send none
    eject_after_failures: int = 3       # consecutive retriable failures of real calls
    max_stream_pending: int = _S.max_frames          # frames a stream may hold unanswered (then flow control)
    max_stream_pending_bytes: int = _S.max_bytes     # ... and bytes
    # Bytes all calls and streams together may hold, every copy counted: with what gRPC and Python add,
    # the router's memory stays under 768 MiB, its Kubernetes limit (docs/configuration.md, the formula).
    max_pending_bytes_total: int = 256 * 1024 * 1024
    max_pending_bytes_per_peer: int = 128 * 1024 * 1024  # ... and one client's calls and streams together
    stream_backend_window: int = _S.backend_window   # frames outstanding on a backend stream at once
    stall_multiplier: float = _S.stall_multiplier    # stall time: this x the recent p99 wait for an answer ...
    stall_min_s: float = _S.stall_min_s              # ... within these bounds
    stall_max_s: float = _S.stall_max_s
    # A request's expected cost by size, added to its per-try timeout, hedge delay and stall time.
    request_cost_s_per_mib: float = RequestCost.s_per_mib
    stream_leg_stall_s: float = _S.leg_stall_s      # a stream's own frames unanswered this long: moved, no blame
    reconnect_backoff_s: float = 0.1    # Watch reconnection starts here ...
    reconnect_backoff_max_s: float = 1.0  # ... and doubles up to this
    admin_token: str = field(default="", repr=False)  # required with admin_listen; ADMIN_TOKEN_MIN_BYTES or more
    # A wrong token is answered after this, and its peer's next token waits as long, in one failure
    # slot shared by all peers (router/adminaccess.py): guessing costs hours whatever the deadline.
    admin_auth_failure_delay_s: float = AdminLimits.auth_failure_delay_s
    # Admin event streams without a token (WatchEvents), all peers together and from one peer.
    admin_max_anonymous_streams: int = AdminLimits.max_anonymous_streams
    admin_max_anonymous_streams_per_peer: int = AdminLimits.max_anonymous_streams_per_peer
    # The worker's limit (its max_image_bytes plus 64 KiB), so that nothing the router accepts is
    # refused by a worker for its size (requests come uncompressed: common/grpcopts.py).
    max_message_bytes: int = names.DEFAULT_MAX_IMAGE_BYTES + names.MESSAGE_OVERHEAD_BYTES
    max_concurrent_rpcs: int = 1000     # unary calls at once, all clients together
    max_concurrent_streams: int = 1000  # DetectStream calls at once, all clients together
    # ... and from one client (its address, with mTLS also its certificate identity): a quarter, so that
    # one client (or a burst of its cameras reconnecting) cannot hold the router and, through it, the workers.
    max_concurrent_rpcs_per_peer: int = 250
    max_concurrent_streams_per_peer: int = 250
    max_watch_streams: int = 100        # health Watch streams at once
    max_watch_streams_per_peer: int = 8  # ... and from one client (address host, with mTLS its identity)
    max_connections: int = 4096         # client connections open at once, on each listener
    # Client connections: a peer pinging more often than this is sent GOAWAY (gRPC's keepalive
    # enforcement); every connection is closed gracefully after an age (with +-10 % jitter) so that
    # clients spread over new router replicas after a scale-out: new calls reconnect at once, while
    # calls open then get the grace period. A day, so that a camera's stream is not cut by it.
    keepalive_min_interval_s: float = 10.0
    max_connection_age_s: float = 1800.0
    max_connection_age_grace_s: float = 86400.0
    stream_idle_timeout_s: float = 300.0  # a stream that sends no frame this long is ended
    shutdown_grace_s: float = 5.0
    log_level: str = "info"
    log_format: str = "auto"           # json, text, or auto (text on a terminal, JSON otherwise)
    # Per router state, request knobs filled in when the client left them unset, e.g.
    # {"FAILOVER": {"score_threshold": 0.4}} (router/requestpolicy.py, docs/router.md).
    request_defaults: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_defaults", requestpolicy.check(self.request_defaults))
        if not self.listen and not self.xds_listen:
            raise ConfigError("listen: required unless xds_listen is given (a router is a proxy, a control plane, "
                              "or both)")
        for name in ("listen", "metrics_listen", "health_listen", "admin_listen", "xds_listen"):
            if getattr(self, name):
                parse_host_port(name, getattr(self, name))
        if self.admin_listen and not self.admin_token:
            raise ConfigError("admin_token: required with admin_listen (--admin-token or EAGLEEYE_ADMIN_TOKEN); "
                              "the admin service moves traffic and must not be open to anyone")
        if self.admin_token and len(self.admin_token.encode()) < ADMIN_TOKEN_MIN_BYTES:
            # Never the token itself in the message: it goes to logs and terminals.
            raise ConfigError(f"admin_token: must be at least {ADMIN_TOKEN_MIN_BYTES} bytes (the one given has "
                              f"{len(self.admin_token.encode())}); make one with: openssl rand -hex 32")
        if self.admin_token and not (self.admin_token.isascii() and self.admin_token.isprintable()):
            raise ConfigError("admin_token: must be printable ASCII on one line (it travels in a gRPC header); "
                              "make one with: openssl rand -hex 32")
        if self.admin_listen and self.admin_listen == self.listen and parse_host_port("listen", self.listen)[1]:
            raise ConfigError(f"admin_listen={self.admin_listen!r}: must differ from listen, so that "
                              "network policy can keep clients away from it")
        if self.xds_listen and self.xds_listen in (self.listen, self.admin_listen) and \
                parse_host_port("xds_listen", self.xds_listen)[1]:
            raise ConfigError(f"xds_listen={self.xds_listen!r}: must differ from listen and admin_listen")
        if not self.xds_name or any(c in self.xds_name for c in "/?#: "):
            raise ConfigError(f"xds_name={self.xds_name!r}: must be a plain name (clients dial xds:///NAME)")
        settings.at_least("xds_num_retries", self.xds_num_retries, 0)
        settings.at_least("xds_max_clients", self.xds_max_clients, 1)
        settings.at_least("xds_max_clients_per_peer", self.xds_max_clients_per_peer, 1)
        tls.check_server_files(self.tls_cert, self.tls_key, self.tls_client_ca)
        tls.check_client_files("backend_tls", self.backend_tls_ca, self.backend_tls_cert, self.backend_tls_key)
        if self.backend_tls_server_name and self.backend_tls_ca is None:
            raise ConfigError("backend_tls_server_name: needs backend_tls_ca (it names the worker certificate's host)")
        if not self.primary or not self.standby:
            raise ConfigError("primary and standby: both backends are required (--primary HOST:PORT[,HOST:PORT...] "
                              "--standby HOST:PORT[,HOST:PORT...])")
        seen: dict[str, str] = {}
        for name in ("primary", "standby"):
            value = getattr(self, name)
            for address in value.split(","):
                if not address.strip():
                    raise ConfigError(f"{name}={value!r}: an empty address in the list")
                parse_host_port(name, address.strip())
                if address.strip() in seen:
                    raise ConfigError(f"{name}={value!r}: {address.strip()} is already a {seen[address.strip()]}: "
                                      "the workers must differ (each is a primary or a standby, once)")
                seen[address.strip()] = name
        for name in ("weights", "degraded_weights"):
            w = getattr(self, name)
            if min(w) < 0 or abs(sum(w) - 100) > 1e-6:
                raise ConfigError(f"{name}={w[0]:g},{w[1]:g}: must be two non-negative percentages summing to 100")
        for name in ("hold_down_s", "hold_down_max_s", "hold_down_reset_s", "check_interval_s",
                     "check_timeout_s", "per_try_timeout_s", "default_deadline_s", "hedge_delay_min_s",
                     "stall_min_s", "stall_multiplier", "retry_budget_window_s",
                     "reconnect_backoff_s", "reconnect_backoff_max_s", "keepalive_min_interval_s",
                     "max_connection_age_s", "max_connection_age_grace_s", "stream_idle_timeout_s",
                     "stream_leg_stall_s"):
            settings.positive(name, getattr(self, name))
        if self.hold_down_max_s < self.hold_down_s:
            raise ConfigError(f"hold_down_max_s={self.hold_down_max_s}: must be >= hold_down_s={self.hold_down_s}")
        settings.at_least("hold_down_multiplier", self.hold_down_multiplier, 1)
        settings.at_least("ramp_s", self.ramp_s, 0)
        settings.at_least("degraded_recover_s", self.degraded_recover_s, 0)
        if self.degraded_recover_max_s < self.degraded_recover_s:
            raise ConfigError(f"degraded_recover_max_s={self.degraded_recover_max_s}: must be >= "
                              f"degraded_recover_s={self.degraded_recover_s}")
        settings.at_least("healthy_checks", self.healthy_checks, 0)
        settings.at_least("check_failures", self.check_failures, 1)
        settings.at_least("eject_after_failures", self.eject_after_failures, 1)
        settings.at_least("max_stream_pending", self.max_stream_pending, 1)
        settings.at_least("max_stream_pending_bytes", self.max_stream_pending_bytes, 1)
        settings.at_least("max_pending_bytes_total", self.max_pending_bytes_total, 1)
        settings.at_least("max_pending_bytes_per_peer", self.max_pending_bytes_per_peer, 1)
        settings.at_least("stream_backend_window", self.stream_backend_window, 1)
        settings.in_range("hedge_quantile", self.hedge_quantile, 0.5, 1.0)
        settings.at_least("retry_budget_ratio", self.retry_budget_ratio, 0)
        settings.at_least("retry_budget_min_per_s", self.retry_budget_min_per_s, 0)
        settings.at_least("request_cost_s_per_mib", self.request_cost_s_per_mib, 0)
        for low, high in (("hedge_delay_min_s", "hedge_delay_max_s"), ("stall_min_s", "stall_max_s")):
            if getattr(self, high) < getattr(self, low):
                raise ConfigError(f"{high}={getattr(self, high)}: must be >= {low}={getattr(self, low)}")
        settings.at_least("max_message_bytes", self.max_message_bytes, 1024 * 1024)
        settings.at_least("admin_auth_failure_delay_s", self.admin_auth_failure_delay_s, 0)
        if not 0 <= self.admin_max_anonymous_streams <= MAX_ANONYMOUS_STREAMS:
            raise ConfigError(f"admin_max_anonymous_streams={self.admin_max_anonymous_streams}: must be in "
                              f"[0, {MAX_ANONYMOUS_STREAMS}] (so that operators always find a call slot; 0: "
                              "event streams need the token)")
        if not 1 <= self.admin_max_anonymous_streams_per_peer <= MAX_ANONYMOUS_STREAMS_PER_PEER:
            raise ConfigError(f"admin_max_anonymous_streams_per_peer={self.admin_max_anonymous_streams_per_peer}: "
                              f"must be in [1, {MAX_ANONYMOUS_STREAMS_PER_PEER}] (half the admin calls one client "
                              "may make at once)")
        for name in ("max_concurrent_rpcs", "max_concurrent_streams", "max_watch_streams",
                     "max_watch_streams_per_peer", "max_concurrent_rpcs_per_peer", "max_concurrent_streams_per_peer",
                     "max_connections"):
            settings.at_least(name, getattr(self, name), 1)
        settings.at_least("shutdown_grace_s", self.shutdown_grace_s, 0)
        settings.one_of("log_level", self.log_level, LOG_LEVELS)
        settings.one_of("log_format", self.log_format, LOG_FORMATS)

    def policy(self) -> PolicyConfig:
        """The policy's share of the settings."""
        return PolicyConfig(normal_weights=self.weights, degraded_weights=self.degraded_weights,
                            hold_down_s=self.hold_down_s, hold_down_max_s=self.hold_down_max_s,
                            hold_down_multiplier=self.hold_down_multiplier, hold_down_reset_s=self.hold_down_reset_s,
                            healthy_checks=self.healthy_checks, ramp_s=self.ramp_s,
                            degraded_recover_s=self.degraded_recover_s,
                            degraded_recover_max_s=self.degraded_recover_max_s)


    def admin_limits(self) -> AdminLimits:
        """The admin API's share of the settings."""
        return AdminLimits(auth_failure_delay_s=self.admin_auth_failure_delay_s,
                           max_anonymous_streams=self.admin_max_anonymous_streams,
                           max_anonymous_streams_per_peer=self.admin_max_anonymous_streams_per_peer)

    def unary(self) -> UnaryConfig:
        """The unary decisions' share of the settings."""
        return UnaryConfig(per_try_timeout_s=self.per_try_timeout_s, hedge_quantile=self.hedge_quantile,
                           hedge_delay_min_s=self.hedge_delay_min_s, hedge_delay_max_s=self.hedge_delay_max_s,
                           cost=RequestCost(self.request_cost_s_per_mib))

    def stream(self) -> StreamConfig:
        """The stream decisions' share of the settings."""
        return StreamConfig(max_frames=self.max_stream_pending, max_bytes=self.max_stream_pending_bytes,
                            backend_window=self.stream_backend_window, stall_multiplier=self.stall_multiplier,
                            stall_min_s=self.stall_min_s, stall_max_s=self.stall_max_s,
                            cost=RequestCost(self.request_cost_s_per_mib), leg_stall_s=self.stream_leg_stall_s)

    def budget(self) -> BudgetConfig:
        """The retry budget's share of the settings."""
        return BudgetConfig(ratio=self.retry_budget_ratio, min_per_s=self.retry_budget_min_per_s,
                            window_s=self.retry_budget_window_s)


def parse_weights(text: str) -> tuple[float, float]:
    """'95,5' -> (95.0, 5.0)."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"weights={text!r}: must be PRIMARY,STANDBY percentages, e.g. 95,5") from None


def parse_request_defaults(items: list[str]) -> dict[str, dict[str, float]]:
    """--request-default STATE:FIELD=VALUE flags as the request_defaults setting (checked later)."""
    out: dict[str, dict[str, float]] = {}
    for item in items:
        try:
            state, key, value = requestpolicy.parse_flag(item)
        except ValueError as e:
            raise ConfigError(f"--request-default: {e}") from None
        out.setdefault(state, {})[key] = value
    return out


def load(file: Path | None, flags: dict[str, Any], env: Mapping[str, str] | None = None) -> RouterConfig:
    """Defaults, then the TOML file, then EAGLEEYE_... variables, then flags (None = not given)."""
    return settings.load(RouterConfig, file, flags, env=env)


