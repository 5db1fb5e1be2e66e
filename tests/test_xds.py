"""Zero-hop mode's pure core: the policy's decision as xDS resources, and the ADS protocol of one stream."""

from __future__ import annotations

import pytest

from eagleeye.api.router.xds.v3 import xds_pb2 as x
from eagleeye.common.printable import SHOWN_LIMIT, printable
from eagleeye.router.fleet import Backend
from eagleeye.router.policy import State
from eagleeye.router.xds import resources as xds
from eagleeye.router.xds import session as ads

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
    # Localities by the router's weights; within one, by the workers' load reports, else round robin.
    (outer,) = cluster.load_balancing_policy.policies
    assert outer.typed_extension_config.typed_config.type_url.endswith("wrr_locality.v3.WrrLocality")
    inner = x.WrrLocality.FromString(outer.typed_extension_config.typed_config.value).endpoint_picking_policy
    assert [p.typed_extension_config.name.rsplit(".", 1)[-1] for p in inner.policies] == [
        "ClientSideWeightedRoundRobin", "RoundRobin"]
    wrr = x.ClientSideWeightedRoundRobin.FromString(inner.policies[0].typed_extension_config.typed_config.value)
    assert not wrr.enable_oob_load_report.value  # per-call reports: no stream per client per worker
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


def drain(s: ads.AdsSession) -> list[x.DiscoveryResponse]:
    """Everything the session has due, as the shell writes it: one response at a time."""
    out = []
    while (r := s.next_response()) is not None:
        out.append(r)
        assert len(out) <= len(xds.TYPES), "a type was due again right after it was written"
    return out


def test_nothing_is_sent_before_the_router_knows_its_workers_then_everything_asked_for() -> None:
    s = ads.AdsSession()
    assert s.on_request(request(xds.LISTENER, node="client-1")) == ads.Outcome()
    assert s.node_id == "client-1" and s.user_agent == "gRPC Python 1.85.1"
    assert not s.due() and drain(s) == []
    s.on_snapshot(snap())
    assert s.due()
    (r,) = drain(s)
    assert r.type_url == xds.LISTENER and [a.type_url for a in r.resources] == [xds.LISTENER] and r.nonce


def test_ack_then_a_change_is_pushed_for_the_changed_type_only() -> None:
    s = ads.AdsSession(snapshot=snap())
    s.on_request(request(xds.LISTENER))
    (lds,) = drain(s)
    s.on_request(request(xds.ENDPOINTS))
    (eds,) = drain(s)
    assert s.on_request(request(xds.LISTENER, version=lds.version_info, nonce=lds.nonce)) == ads.Outcome()
    assert s.on_request(request(xds.ENDPOINTS, version=eds.version_info, nonce=eds.nonce)) == ads.Outcome()
    assert drain(s) == []
    assert s.types[xds.ENDPOINTS].acked_version == eds.version_info
    s.on_snapshot(snap(50))
    (pushed,) = drain(s)
    assert pushed.type_url == xds.ENDPOINTS and pushed.version_info != eds.version_info
    s.on_snapshot(snap(50))  # the same content again: nothing
    assert drain(s) == []


def test_a_stale_request_is_ignored_and_a_nack_is_recorded_without_a_resend() -> None:
    s = ads.AdsSession(snapshot=snap())
    s.on_request(request(xds.ENDPOINTS))
    (first,) = drain(s)
    s.on_snapshot(snap(50))
    (second,) = drain(s)
    # The client's ACK of the first response crosses the second one: it says nothing about the second.
    assert s.on_request(request(xds.ENDPOINTS, version=first.version_info, nonce=first.nonce)) == ads.Outcome()
    assert s.types[xds.ENDPOINTS].acked_version == ""
    out = s.on_request(request(xds.ENDPOINTS, version=first.version_info, nonce=second.nonce,
                               error="weight out of range"))
    assert out.nack == "weight out of range" and out.log_nack and s.nacks == 1 and drain(s) == []
    assert s.types[xds.ENDPOINTS].nack == "weight out of range"
    s.on_snapshot(snap(60))  # a new version is still offered
    (third,) = drain(s)
    out = s.on_request(request(xds.ENDPOINTS, version=third.version_info, nonce=third.nonce))
    assert out == ads.Outcome() and s.types[xds.ENDPOINTS].nack == ""


def test_a_changed_subscription_is_answered_with_what_exists() -> None:
    s = ads.AdsSession(snapshot=snap())
    s.on_request(request(xds.CLUSTER, names=("other",)))
    (r,) = drain(s)
    assert list(r.resources) == []
    s.on_request(request(xds.CLUSTER, names=(NAME, "other"), version=r.version_info, nonce=r.nonce))
    (r,) = drain(s)
    assert len(r.resources) == 1
    s.on_request(request(xds.CLUSTER, names=(), version=r.version_info, nonce=r.nonce))  # wildcard
    (r,) = drain(s)
    assert len(r.resources) == 1
    s.on_request(request(xds.ENDPOINTS))
    (e,) = drain(s)
    s.on_request(request(xds.ENDPOINTS, names=(), version=e.version_info, nonce=e.nonce))
    (e,) = drain(s)
    assert list(e.resources) == []  # no wildcard for assignments: no names is an unsubscription


def test_types_the_control_plane_does_not_serve_are_ignored() -> None:
    s = ads.AdsSession(snapshot=snap())
    assert s.on_request(request("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")) == ads.Outcome()
    assert s.types == {} and drain(s) == []


# Each step: a request (or a new snapshot, "SNAP n"), then the type URLs due, in the order written.
# "LAST" stands for the nonce and version of the last response of that type; the shell writes what is
# due only where the step says "write", so several steps can pile up before the client reads.
L, C, E = xds.LISTENER, xds.CLUSTER, xds.ENDPOINTS
Step = tuple[str, tuple[str, ...], str, bool, list[str]]  # type, names, nonce ("", "LAST", "old"), write, due


@pytest.mark.parametrize("steps", [
    pytest.param([(L, (NAME,), "", True, [L]), (L, (NAME,), "", True, []), (L, (NAME,), "", True, [])],
                 id="repeated identical requests with an empty nonce: one answer"),
    pytest.param([(L, (NAME,), "", True, [L]), (L, (NAME,), "LAST", True, []), (L, (NAME,), "LAST", True, [])],
                 id="ACKs, again and again: nothing new"),
    pytest.param([(L, (NAME,), "", True, [L]), (L, ("a",), "LAST", True, [L]), (L, ("a",), "", True, [])],
                 id="a changed subscription: one answer"),
    pytest.param([(L, (NAME,), "", False, [L]), (L, ("a",), "", False, [L]), (L, ("b",), "", False, [L]),
                  (L, (NAME,), "", True, [L])],
                 id="a client that does not read: still one response due, with the latest names"),
    pytest.param([(L, (NAME,), "", True, [L]), (L, ("a",), "", False, [L]), (L, (NAME,), "", True, [])],
                 id="a change undone before it was written: nothing"),
    pytest.param([(L, (NAME,), "", False, [L]), (C, (NAME,), "", False, [L, C]), (E, (NAME,), "", False, [L, C, E]),
                  (L, ("a",), "", False, [L, C, E]), (E, ("b",), "", True, [L, C, E]), (E, ("b",), "", True, [])],
                 id="at most one response due per type, whatever is asked meanwhile"),
    pytest.param([(E, (NAME,), "", True, [E]), ("SNAP", (), "", False, [E]), ("SNAP", (), "", True, [E]),
                  (E, (NAME,), "LAST", True, [])],
                 id="new assignments while a client does not read: one push, of the latest"),
    pytest.param([(L, (NAME,), "", True, [L]), (L, ("a",), "old", True, [])],
                 id="a request answering an older response changes nothing"),
])
def test_a_response_only_when_the_subscription_or_the_content_changed(steps: list[Step]) -> None:
    s = ads.AdsSession(snapshot=snap())
    last: dict[str, x.DiscoveryResponse] = {}
    primary = 95.0
    for type_url, names, nonce, write, due in steps:
        if type_url == "SNAP":
            primary -= 10
            s.on_snapshot(snap(primary))
        else:
            r = last.get(type_url)
            req = request(type_url, names, version=r.version_info if r and nonce else "",
                          nonce={"": "", "LAST": r.nonce if r else "", "old": "0"}[nonce])
            assert s.on_request(req) == ads.Outcome()
        assert [t for t in xds.TYPES if s.types.get(t) and s.types[t].due(s.snapshot, t)] == due
        if write:
            written = drain(s)
            assert [r.type_url for r in written] == due
            assert all(r.version_info == snap(primary).versions[r.type_url] for r in written)  # the latest
            last.update((r.type_url, r) for r in written)


@pytest.mark.parametrize(("names", "refused"), [
    ((NAME,) * ads.MAX_NAMES_PER_TYPE, ""),
    (("n",) * (ads.MAX_NAMES_PER_TYPE + 1), "MAX_NAMES_PER_TYPE"),
    (("n" * ads.MAX_NAME_CHARS,), ""),
    (("n" * (ads.MAX_NAME_CHARS + 1),), "MAX_NAME_CHARS"),
])
def test_a_subscription_beyond_the_limits_ends_the_stream_naming_the_limit(names: tuple[str, ...],
                                                                          refused: str) -> None:
    s = ads.AdsSession(snapshot=snap())
    out = s.on_request(request(xds.CLUSTER, names))
    assert (refused in out.refused) if refused else out.refused == ""
    assert (xds.CLUSTER in s.types) == (not refused)  # nothing kept of a refused request


def test_nacks_are_logged_once_per_period_with_the_count_of_the_others() -> None:
    s = ads.AdsSession(snapshot=snap())
    s.on_request(request(xds.LISTENER))
    (r,) = drain(s)
    nack = request(xds.LISTENER, nonce=r.nonce, error="bad")
    period = ads.NACK_LOG_INTERVAL_S
    times = (100.0, 100.1, 101.0, 100 + period - 0.01, 100 + period, 100 + period + 1, 100 + 3 * period)
    got = [(o.log_nack, o.suppressed) for o in (s.on_request(nack, now) for now in times)]
    assert got == [(True, 0), (False, 0), (False, 0), (False, 0), (True, 3), (False, 0), (True, 1)]
    assert s.nacks == 7 and drain(s) == []  # every NACK counted; none makes the refused version due again


HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\r\nline\x9b2J\u202eevil\x00"


@pytest.mark.parametrize(("text", "limit", "want"), [
    ("client-1", 256, "client-1"),
    ("pod-7 (gRPC Python 1.85.1) é 測試", 256, "pod-7 (gRPC Python 1.85.1) é 測試"),  # printable Unicode stays
    (HOSTILE, 256, "?]0;owned??[2J?[31mred??line?2J?evil?"),
    ("x" * 300, 256, "x" * 253 + "..."),
    ("\x1b" * 300, 10, "???????..."),
    ("abcdef", 2, ".."),
    ("", 256, ""),
])
def test_a_peers_text_is_shown_printable_and_cut(text: str, limit: int, want: str) -> None:
    assert printable(text, limit) == want
    assert printable(want, limit) == want  # idempotent: shown twice, the same


def test_a_clients_node_id_user_agent_version_and_nack_are_kept_printable_and_cut() -> None:
    s = ads.AdsSession(snapshot=snap())
    req = request(xds.LISTENER, node=HOSTILE + "n" * 100_000)
    req.node.user_agent_name = HOSTILE
    s.on_request(req)
    (r,) = drain(s)
    assert s.node_id.startswith("?]0;owned") and len(s.node_id) == SHOWN_LIMIT and s.node_id.isprintable()
    assert s.user_agent.isprintable() and "\x1b" not in s.user_agent
    out = s.on_request(request(xds.LISTENER, nonce=r.nonce, version=HOSTILE, error=HOSTILE + "e" * 65536))
    assert out.nack == s.types[xds.LISTENER].nack and out.nack is not None
    assert len(out.nack) == SHOWN_LIMIT and out.nack.isprintable() and out.nack.endswith("...")
    s.on_request(request(xds.LISTENER, nonce=r.nonce, version=HOSTILE * 100))  # an ACK with a version of its own
    assert s.types[xds.LISTENER].acked_version.isprintable() and len(s.types[xds.LISTENER].acked_version) <= SHOWN_LIMIT
