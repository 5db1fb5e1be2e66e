"""Zero-hop mode's pure core: the policy's decision as xDS resources, and the ADS protocol of one stream."""

from __future__ import annotations

import pytest

from eagleeye.router.fleet import Backend
from eagleeye.router.policy import State
from eagleeye.router.xds import resources as xds
from eagleeye.router.xds.v3 import xds_pb2 as x

P, S = Backend.PRIMARY, Backend.STANDBY
HEALTHY, UNHEALTHY, DRAINING, UNKNOWN = x.HEALTHY, x.UNHEALTHY, x.DRAINING, x.UNKNOWN


def facts(p_ready: bool = True, s_ready: bool = True, p_drained: bool = False, s_drained: bool = False,
          ) -> dict[Backend, xds.BackendFacts]:
    return {P: xds.BackendFacts((("10.0.0.1", 50051),), p_ready, p_drained),
            S: xds.BackendFacts((("10.0.0.2", 50051),), s_ready, s_drained)}


@pytest.mark.parametrize(("state", "weights", "f", "want"), [
    # NORMAL: both localities in priority 0, weighted like the proxy.
    (State.NORMAL, (95, 5), facts(), {P: (HEALTHY, 95, 0), S: (HEALTHY, 5, 0)}),
    # The ramp's fractional weights in whole percent; a positive weight never rounds to 0 (that drops it).
    (State.RECOVERING, (37.6, 62.4), facts(), {P: (HEALTHY, 38, 0), S: (HEALTHY, 62, 0)}),
    (State.RECOVERING, (0.3, 99.7), facts(), {P: (HEALTHY, 1, 0), S: (HEALTHY, 100, 0)}),
    # Hold-down: the primary is ready but gets nothing; a fallback if the standby fails first.
    (State.RECOVERING, (0, 100), facts(), {P: (HEALTHY, 1, 1), S: (HEALTHY, 100, 0)}),
    (State.FAILOVER, (0, 100), facts(p_ready=False), {P: (UNHEALTHY, 1, 0), S: (HEALTHY, 100, 0)}),
    (State.STANDBY_DOWN, (100, 0), facts(s_ready=False), {P: (HEALTHY, 100, 0), S: (UNHEALTHY, 1, 0)}),
    (State.DEGRADED, (60, 40), facts(), {P: (HEALTHY, 60, 0), S: (HEALTHY, 40, 0)}),
    # An operator's drain holds in every state.
    (State.FAILOVER, (0, 100), facts(p_drained=True), {P: (DRAINING, 1, 0), S: (HEALTHY, 100, 0)}),
    (State.BOTH_DOWN, (0, 0), facts(False, False, p_drained=True), {P: (DRAINING, 1, 0), S: (UNKNOWN, 1, 0)}),
    # BOTH_DOWN by the router's view: the clients' own connectivity decides.
    (State.BOTH_DOWN, (0, 0), facts(False, False), {P: (UNKNOWN, 1, 0), S: (UNKNOWN, 1, 0)}),
])
def test_placements_mirror_the_policy(state: State, weights: tuple[float, float],
                                      f: dict[Backend, xds.BackendFacts],
                                      want: dict[Backend, tuple[int, int, int]]) -> None:
    got = xds.placements(state, {P: weights[0], S: weights[1]}, f)
    assert {b: (p.health, p.weight, p.priority) for b, p in got.items()} == want


def test_a_priority_1_backend_moves_up_when_nothing_in_priority_0_can_serve() -> None:
    # Hold-down while the standby fails: priorities must start at 0 (a gap makes clients refuse it).
    got = xds.placements(State.RECOVERING, {P: 0, S: 100}, facts(s_ready=False))
    assert {b: (p.health, p.priority) for b, p in got.items()} == {P: (HEALTHY, 0), S: (UNHEALTHY, 0)}


def test_a_backend_without_addresses_is_left_out() -> None:
    f = facts()
    f[S] = xds.BackendFacts((), True, False)
    assert set(xds.placements(State.NORMAL, {P: 95, S: 5}, f)) == {P}


def decode(snapshot: xds.Snapshot) -> tuple[x.Listener, x.Cluster, x.ClusterLoadAssignment]:
    listener = x.Listener.FromString(snapshot.resources[xds.LISTENER]["eagleeye-detector"].value)
    cluster = x.Cluster.FromString(snapshot.resources[xds.CLUSTER]["eagleeye-detector"].value)
    cla = x.ClusterLoadAssignment.FromString(snapshot.resources[xds.ENDPOINTS]["eagleeye-detector"].value)
    return listener, cluster, cla


def test_the_resources_route_everything_to_the_cluster_with_a_retry_policy() -> None:
    snap = xds.build("eagleeye-detector", State.NORMAL, {P: 95, S: 5}, facts())
    listener, cluster, cla = decode(snap)
    assert listener.name == "eagleeye-detector"
    hcm = x.HttpConnectionManager.FromString(listener.api_listener.api_listener.value)
    assert listener.api_listener.api_listener.type_url.endswith("HttpConnectionManager")
    assert hcm.http_filters[-1].typed_config.type_url.endswith("filters.http.router.v3.Router")
    (vhost,) = hcm.route_config.virtual_hosts
    (route,) = vhost.routes
    assert vhost.domains == ["*"] and route.match.prefix == "/" and route.route.cluster == "eagleeye-detector"
    retry = route.route.retry_policy
    assert retry.retry_on == "unavailable" and retry.num_retries.value == 2
    assert retry.retry_back_off.base_interval.ToMilliseconds() == 5
    assert cluster.type == x.Cluster.EDS and cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.eds_cluster_config.service_name == "eagleeye-detector"
    assert [(e.locality.zone, e.load_balancing_weight.value, e.priority,
             e.lb_endpoints[0].endpoint.address.socket_address.address) for e in cla.endpoints] == [
        ("primary", 95, 0, "10.0.0.1"), ("standby", 5, 0, "10.0.0.2")]


def test_versions_change_exactly_when_the_content_does() -> None:
    a = xds.build("eagleeye-detector", State.NORMAL, {P: 95, S: 5}, facts())
    b = xds.build("eagleeye-detector", State.NORMAL, {P: 95.2, S: 4.8}, facts())  # the same whole percents
    c = xds.build("eagleeye-detector", State.RECOVERING, {P: 50, S: 50}, facts())
    assert a.versions == b.versions
    assert c.versions[xds.ENDPOINTS] != a.versions[xds.ENDPOINTS]
    assert c.versions[xds.LISTENER] == a.versions[xds.LISTENER] and c.versions[xds.CLUSTER] == a.versions[xds.CLUSTER]


# -- the ADS protocol of one stream -------------------------------------------------------------------

NAME = "eagleeye-detector"


def request(type_url: str, names: tuple[str, ...] = (NAME,), version: str = "", nonce: str = "",
            error: str = "", node: str = "") -> x.DiscoveryRequest:
    r = x.DiscoveryRequest(type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce)
    if error:
        r.error_detail.code, r.error_detail.message = 3, error
    if node:
        r.node.id, r.node.user_agent_name, r.node.user_agent_version = node, "gRPC Python", "1.85.1"
    return r


def snap(primary: float = 95) -> xds.Snapshot:
    return xds.build(NAME, State.NORMAL, {P: primary, S: 100 - primary}, facts())


def test_nothing_is_sent_before_the_router_knows_its_workers_then_everything_asked_for() -> None:
    s = xds.AdsSession()
    assert s.on_request(request(xds.LISTENER, node="client-1")) == ([], None)
    assert s.node_id == "client-1" and s.user_agent == "gRPC Python 1.85.1"
    (r,) = s.on_snapshot(snap())
    assert r.type_url == xds.LISTENER and [a.type_url for a in r.resources] == [xds.LISTENER] and r.nonce


def test_ack_then_a_change_is_pushed_for_the_changed_type_only() -> None:
    s = xds.AdsSession(snapshot=snap())
    (lds,), _ = s.on_request(request(xds.LISTENER))
    (eds,), _ = s.on_request(request(xds.ENDPOINTS))
    assert s.on_request(request(xds.LISTENER, version=lds.version_info, nonce=lds.nonce)) == ([], None)
    assert s.on_request(request(xds.ENDPOINTS, version=eds.version_info, nonce=eds.nonce)) == ([], None)
    assert s.types[xds.ENDPOINTS].acked_version == eds.version_info
    (pushed,) = s.on_snapshot(snap(50))
    assert pushed.type_url == xds.ENDPOINTS and pushed.version_info != eds.version_info
    assert s.on_snapshot(snap(50)) == []  # the same content again: nothing


def test_a_stale_request_is_ignored_and_a_nack_is_recorded_without_a_resend() -> None:
    s = xds.AdsSession(snapshot=snap())
    (first,), _ = s.on_request(request(xds.ENDPOINTS))
    (second,) = s.on_snapshot(snap(50))
    # The client's ACK of the first response crosses the second one: it says nothing about the second.
    assert s.on_request(request(xds.ENDPOINTS, version=first.version_info, nonce=first.nonce)) == ([], None)
    assert s.types[xds.ENDPOINTS].acked_version == ""
    out, nack = s.on_request(request(xds.ENDPOINTS, version=first.version_info, nonce=second.nonce,
                                     error="weight out of range"))
    assert out == [] and nack == "weight out of range" and s.nacks == 1
    assert s.types[xds.ENDPOINTS].nack == "weight out of range"
    (third,) = s.on_snapshot(snap(60))  # a new version is still offered
    out, nack = s.on_request(request(xds.ENDPOINTS, version=third.version_info, nonce=third.nonce))
    assert out == [] and nack is None and s.types[xds.ENDPOINTS].nack == ""


def test_a_changed_subscription_is_answered_with_what_exists() -> None:
    s = xds.AdsSession(snapshot=snap())
    (r,), _ = s.on_request(request(xds.CLUSTER, names=("other",)))
    assert list(r.resources) == []
    (r,), _ = s.on_request(request(xds.CLUSTER, names=(NAME, "other"), version=r.version_info, nonce=r.nonce))
    assert len(r.resources) == 1
    (r,), _ = s.on_request(request(xds.CLUSTER, names=(), version=r.version_info, nonce=r.nonce))  # wildcard
    assert len(r.resources) == 1
    (e,), _ = s.on_request(request(xds.ENDPOINTS))
    (e,), _ = s.on_request(request(xds.ENDPOINTS, names=(), version=e.version_info, nonce=e.nonce))
    assert list(e.resources) == []  # no wildcard for assignments: no names is an unsubscription


def test_types_the_control_plane_does_not_serve_are_ignored() -> None:
    s = xds.AdsSession(snapshot=snap())
    assert s.on_request(request("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")) == ([], None)
