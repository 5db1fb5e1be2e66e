"""Zero-hop mode, the pure part: the router's decision as xDS resources (router/xds/session.py speaks
the ADS protocol of one stream with them).

gRPC clients that speak xDS (grpcio, grpc-go, grpc-java, grpc-c++: "proxyless gRPC") take the routing
decision from the router and call the workers directly. What they get mirrors what drives the proxy:

    Listener NAME              api_listener: an inline route for every method to cluster NAME, with a
                               retry policy (UNAVAILABLE: 2 retries, 5-50 ms back-off)
    Cluster NAME               EDS over ADS; localities by weight (wrr_locality), within one by the
                               workers' ORCA load reports (weighted round robin), else round robin
    ClusterLoadAssignment NAME one locality per backend, weighted in whole percent as the policy says;
                               its endpoints HEALTHY when ready, DRAINING when drained by an operator,
                               UNHEALTHY when not ready

A backend the policy gives no traffic but that could serve (the primary during hold-down) goes in
priority 1: clients fall back to it by themselves if everything in priority 0 fails before the
router has noticed. In BOTH_DOWN the router's own view says nothing works; clients may see the
workers differently (the router's network is not theirs), so both backends are offered with health
UNKNOWN and equal weights, and the clients' connectivity decides (a proxy in that state can only
refuse). A drained backend stays DRAINING in every state: that is the operator's word.

A client gets nothing until the router has a snapshot (its view of the workers settled), so it
never sees an empty or partial state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from eagleeye.api.router.xds.v3 import xds_pb2 as x
from eagleeye.router.fleet import Backend
from eagleeye.router.policy import State

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPES = (LISTENER, CLUSTER, ENDPOINTS)
SHORT = {LISTENER: "listener", CLUSTER: "cluster", ENDPOINTS: "endpoints"}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER_FILTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

RETRY_BASE_MS, RETRY_MAX_MS = 5, 50
_LB = "envoy.extensions.load_balancing_policies"
_WRR_LOCALITY = f"{_LB}.wrr_locality.v3.WrrLocality"
_WRR = f"{_LB}.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin"
_ROUND_ROBIN = f"{_LB}.round_robin.v3.RoundRobin"
# Weighted round robin: a worker's reports count once it has reported this long (its rates are over a
# couple of seconds: common/loadreport.WINDOW_S; gRPC's default is 10 s), and weights are recomputed
# every second.
WRR_BLACKOUT_MS, WRR_UPDATE_MS = 2000, 1000


@dataclass(frozen=True)
class BackendFacts:
    """What the assignment needs to know about one backend."""

    addresses: tuple[tuple[str, int], ...]   # IP addresses (clients do not resolve names from EDS)
    ready: bool
    drained: bool


@dataclass(frozen=True)
class Placement:
    """One backend's part in the assignment: health, weight (percent, 0: none) and priority."""

    health: x.HealthStatus
    weight: int
    priority: int


def placements(state: State, weights: Mapping[Backend, float], facts: Mapping[Backend, BackendFacts],
               ) -> dict[Backend, Placement]:
    """Each backend's health, locality weight and priority for the policy's decision (backends left out
    are offered to nobody)."""
    out: dict[Backend, Placement] = {}
    for b, f in facts.items():
        if not f.addresses:
            continue
        if f.drained:
            out[b] = Placement(x.DRAINING, 1, 0)
        elif state is State.BOTH_DOWN:
            out[b] = Placement(x.UNKNOWN, 1, 0)
        elif not f.ready:
            out[b] = Placement(x.UNHEALTHY, 1, 0)
        else:
            w = weights.get(b, 0.0)
            out[b] = Placement(x.HEALTHY, max(1, round(w)), 0) if w > 0 else Placement(x.HEALTHY, 1, 1)
    # A locality that can take no traffic anyway is left out of the weights (a weight for an unhealthy
    # locality would be ignored, and priorities must run from 0 without gaps).
    if not any(p.priority == 0 and p.health in (x.HEALTHY, x.UNKNOWN) for p in out.values()):
        out = {b: (Placement(p.health, p.weight, 0) if p.priority == 1 else p) for b, p in out.items()}
    return out


def _pack(type_url: str, message: object) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString())  # type: ignore[attr-defined]


def _duration_ms(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


@dataclass(frozen=True)
class Snapshot:
    """Every resource a client may ask for, by type and name, and each type's version."""

    resources: Mapping[str, Mapping[str, any_pb2.Any]]
    versions: Mapping[str, str]


def _policy(type_name: str, config: object) -> x.LoadBalancingPolicy.Policy:
    return x.LoadBalancingPolicy.Policy(typed_extension_config=x.TypedExtensionConfig(
        name=type_name, typed_config=_pack(f"type.googleapis.com/{type_name}", config)))


def load_balancing_policy() -> x.LoadBalancingPolicy:
    """Localities by the weights the router publishes; within one (the primaries at full share), by the
    workers' own load reports where the client can (gRPC's weighted round robin over ORCA, reported per
    call: common/loadreport.py), else round robin."""
    wrr = x.ClientSideWeightedRoundRobin(blackout_period=_duration_ms(WRR_BLACKOUT_MS),
                                         weight_update_period=_duration_ms(WRR_UPDATE_MS))
    within = x.LoadBalancingPolicy(policies=[_policy(_WRR, wrr), _policy(_ROUND_ROBIN, x.RoundRobin())])
    return x.LoadBalancingPolicy(policies=[_policy(_WRR_LOCALITY, x.WrrLocality(endpoint_picking_policy=within))])


def build(name: str, state: State, weights: Mapping[Backend, float], facts: Mapping[Backend, BackendFacts],
          num_retries: int = 2) -> Snapshot:
    """The resources for service `name` under the policy's decision."""
    route = x.Route(name="all", match=x.RouteMatch(prefix="/"), route=x.RouteAction(
        cluster=name,
        retry_policy=x.RetryPolicy(retry_on="unavailable", num_retries=wrappers_pb2.UInt32Value(value=num_retries),
                                   retry_back_off=x.RetryBackOff(base_interval=_duration_ms(RETRY_BASE_MS),
                                                                 max_interval=_duration_ms(RETRY_MAX_MS)))))
    hcm = x.HttpConnectionManager(
        stat_prefix=name,
        route_config=x.RouteConfiguration(name=name, virtual_hosts=[
            x.VirtualHost(name=name, domains=["*"], routes=[route])]),
        http_filters=[x.HttpFilter(name="router", typed_config=any_pb2.Any(type_url=_ROUTER_FILTER))])
    listener = x.Listener(name=name, api_listener=x.ApiListener(api_listener=_pack(_HCM, hcm)))

    cluster = x.Cluster(name=name, type=x.Cluster.EDS, connect_timeout=_duration_ms(1000),
                        eds_cluster_config=x.EdsClusterConfig(service_name=name),
                        load_balancing_policy=load_balancing_policy())
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.eds_cluster_config.eds_config.resource_api_version = x.V3

    cla = x.ClusterLoadAssignment(cluster_name=name)
    # Primaries serving their full share go together in one locality, whose weight is their sum: a
    # client picks a locality by weight, then round-robins within it, so new streams and calls spread
    # evenly over them. Any other worker (the standbys, a primary ramping back or degraded) is a
    # locality of its own with its own weight.
    placed = placements(state, weights, facts)
    groups: dict[tuple[object, ...], list[Backend]] = {}
    for b, p in sorted(placed.items(), key=lambda item: item[0].value):
        together = b.primary and p.health == x.HEALTHY and p.priority == 0
        groups.setdefault(("primaries", p.weight) if together else (b.value,), []).append(b)
    for members in sorted(groups.values(), key=lambda m: m[0].value):
        p = placed[members[0]]
        zone = members[0].value if len(members) == 1 else f"primaries-{len(members)}"
        cla.endpoints.append(x.LocalityLbEndpoints(
            locality=x.Locality(region="eagleeye", zone=zone),
            load_balancing_weight=wrappers_pb2.UInt32Value(value=sum(placed[m].weight for m in members)),
            priority=p.priority,
            lb_endpoints=[x.LbEndpoint(health_status=p.health, endpoint=x.Endpoint(address=x.Address(
                socket_address=x.SocketAddress(address=host, port_value=port))))
                for m in members for host, port in facts[m].addresses]))

    resources = {LISTENER: {name: _pack(LISTENER, listener)}, CLUSTER: {name: _pack(CLUSTER, cluster)},
                 ENDPOINTS: {name: _pack(ENDPOINTS, cla)}}
    return Snapshot(resources, {t: _version(r) for t, r in resources.items()})


def _version(resources: Mapping[str, any_pb2.Any]) -> str:
    """A version that changes exactly when the content does (the same content: the same version, so a
    client is never sent what it already has)."""
    h = hashlib.sha256()
    for n in sorted(resources):
        h.update(n.encode())
        h.update(resources[n].SerializeToString(deterministic=True))
    return h.hexdigest()[:12]
