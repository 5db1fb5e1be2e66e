"""The `eagleeye` client tool: options, the admin commands and TLS, against an in-process fake RouterAdmin.

Wrong option combinations are checked in-process through `main(argv)` (they end before any event
loop). Everything that dials runs the CLI as a subprocess (`python -m eagleeye.client ...`) while the fake
router's grpc.aio server runs in the test's own event loop. Certificates are made with `openssl`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from eagleeye.api.router.v1 import router_pb2 as rpb
from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc
from eagleeye.client.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token-of-32-bytes-or-more"  # as long as a router accepts


# --- certificates -------------------------------------------------------------------------------

REQ_CNF = """\
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

LEAF_CNF = """\
[v3]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=EagleEye test {name}",
             "-config", "req.cnf", "-extensions", "v3_ca", cwd=d)


def _leaf(d: Path, name: str, ca: str, san: str) -> None:
    (d / f"{name}.cnf").write_text(LEAF_CNF.format(san=san))
    _openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", "-config", "req.cnf", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-set_serial",
             str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.cnf", "-extensions", "v3", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca (server and client certificates), other-ca (a client certificate the servers must refuse)."""
    d = tmp_path_factory.mktemp("certs")
    (d / "req.cnf").write_text(REQ_CNF)
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "ca", "IP:127.0.0.1,DNS:router.eagleeye.test")
    _leaf(d, "client", "ca", "DNS:operator.eagleeye.test")
    _leaf(d, "stranger", "other-ca", "DNS:stranger.eagleeye.test")
    return d


# --- the fake router ----------------------------------------------------------------------------

@dataclass
class Call:
    method: str
    request: object
    authorization: str | None


@dataclass
class FakeAdmin(rpb_grpc.RouterAdminServicer):
    """A router admin API that checks the token on actions, as the router does, and records every call."""

    calls: list[Call] = field(default_factory=list)
    drained: dict[int, bool] = field(default_factory=lambda: {rpb.BACKEND_PRIMARY: False, rpb.BACKEND_STANDBY: False})
    standby_ready: bool = True
    follow_forever: bool = False  # WatchEvents: after the live event, keep the stream open
    events: list[rpb.SwitchEvent] = field(default_factory=lambda: [
        rpb.SwitchEvent(time_unix=1_700_000_000 + i, from_state=a, to_state=b, reason=f"event {i}",
                        detection_ms=100.0 * i, primary_weight=pw, standby_weight=100 - pw)
        for i, (a, b, pw) in enumerate((("NORMAL", "FAILOVER", 0), ("FAILOVER", "RECOVERING", 10),
                                        ("RECOVERING", "NORMAL", 100)))])

    def _record(self, method: str, request: object, context: grpc.aio.ServicerContext) -> str | None:
        auth = dict(context.invocation_metadata() or ()).get("authorization")
        self.calls.append(Call(method, request, None if auth is None else str(auth)))
        return None if auth is None else str(auth)

    async def _authorize(self, auth: str | None, context: grpc.aio.ServicerContext) -> None:
        if auth != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong admin token")

    def state(self) -> rpb.RouterState:
        return rpb.RouterState(
            state="FAILOVER" if self.drained[rpb.BACKEND_PRIMARY] else "NORMAL",
            backends=[rpb.BackendHealth(backend=rpb.BACKEND_PRIMARY, address="10.0.0.1:50051", ready=True,
                                        headroom=True,
                                        drained=self.drained[rpb.BACKEND_PRIMARY],
                                        weight=0.0 if self.drained[rpb.BACKEND_PRIMARY] else 100.0),
                      rpb.BackendHealth(backend=rpb.BACKEND_STANDBY, address="10.0.0.2:50051", ready=self.standby_ready,
                                        headroom=self.standby_ready, drained=self.drained[rpb.BACKEND_STANDBY],
                                        reason="" if self.standby_ready else "warming up",
                                        weight=100.0 if self.drained[rpb.BACKEND_PRIMARY] else 0.0)],
            recent_events=self.events)

    async def GetState(self, request: rpb.GetStateRequest,
                       context: grpc.aio.ServicerContext) -> rpb.GetStateResponse:
        self._record("GetState", request, context)
        return rpb.GetStateResponse(state=self.state())

    async def WatchEvents(self, request: rpb.WatchEventsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.WatchEventsResponse]:
        self._record("WatchEvents", request, context)
        for e in self.events[-request.replay_recent:] if request.replay_recent else []:
            yield rpb.WatchEventsResponse(event=e)
        # One live event, then the stream ends (the CLI follows until then).
        yield rpb.WatchEventsResponse(event=rpb.SwitchEvent(time_unix=1_700_000_100, from_state="NORMAL",
                                                            to_state="DEGRADED", reason="live"))
        if self.follow_forever:
            await asyncio.Event().wait()

    async def SetDrain(self, request: rpb.SetDrainRequest,
                       context: grpc.aio.ServicerContext) -> rpb.SetDrainResponse:
        await self._authorize(self._record("SetDrain", request, context), context)
        self.drained[request.backend] = request.drained
        return rpb.SetDrainResponse(state=self.state())

    async def Switch(self, request: rpb.SwitchRequest, context: grpc.aio.ServicerContext) -> rpb.SwitchResponse:
        await self._authorize(self._record("Switch", request, context), context)
        if request.to == rpb.BACKEND_STANDBY and not self.standby_ready and not request.force:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the standby is not ready (use force)")
        self.drained[rpb.BACKEND_PRIMARY] = request.to == rpb.BACKEND_STANDBY
        return rpb.SwitchResponse(state=self.state())

    def reset(self) -> None:
        self.calls.clear()
        self.drained = {rpb.BACKEND_PRIMARY: False, rpb.BACKEND_STANDBY: False}
        self.standby_ready = True
        self.follow_forever = False


@dataclass
class Router:
    address: str
    fake: FakeAdmin


async def _serve(credentials: grpc.ServerCredentials | None) -> tuple[grpc.aio.Server, Router]:
    fake = FakeAdmin()
    server = grpc.aio.server()
    rpb_grpc.add_RouterAdminServicer_to_server(fake, server)
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials is not None
            else server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    return server, Router(f"127.0.0.1:{port}", fake)


def _server_credentials(certs: Path, require_client_cert: bool) -> grpc.ServerCredentials:
    pair = ((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())
    if require_client_cert:
        return grpc.ssl_server_credentials([pair], root_certificates=(certs / "ca.pem").read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([pair])


@pytest.fixture(scope="module")
async def plain() -> AsyncIterator[Router]:
    server, router = await _serve(None)
    yield router
    await server.stop(None)


@pytest.fixture(scope="module")
async def tls(certs: Path) -> AsyncIterator[Router]:
    server, router = await _serve(_server_credentials(certs, require_client_cert=False))
    yield router
    await server.stop(None)


@pytest.fixture(scope="module")
async def mtls(certs: Path) -> AsyncIterator[Router]:
    server, router = await _serve(_server_credentials(certs, require_client_cert=True))
    yield router
    await server.stop(None)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("EAGLEEYE_ADMIN_TOKEN", raising=False)
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    yield


# --- running the CLI ----------------------------------------------------------------------------

@dataclass
class Result:
    rc: int
    out: str
    err: str


async def cli(*argv: str, token: str | None = None, timeout: float = 30.0) -> Result:
    """`python -m eagleeye.client ARGV` in a subprocess, the event loop (and the fake router) running meanwhile."""
    env = dict(os.environ)
    if token is not None:
        env["EAGLEEYE_ADMIN_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "eagleeye.client", *argv, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    """main(argv) in-process, for what ends before dialing (a parser error raises SystemExit)."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    captured = capsys.readouterr()
    return Result(rc, captured.out, captured.err)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    return lines[0]


# --- options --------------------------------------------------------------------------------------

DEAD = "127.0.0.1:1"  # nothing listens: a command that dialed would exit 1, not 2


@pytest.mark.parametrize(("argv", "expect"), [
    (["admin", "drain", "primary", "--target", DEAD], "EAGLEEYE_ADMIN_TOKEN"),
    (["admin", "undrain", "standby", "--target", DEAD], "--token-file"),
    (["admin", "switch", "standby", "--force", "--target", DEAD], "no admin token"),
    (["admin", "state", "--target", DEAD, "--tls-ca", "ca.pem", "--tls-cert", "c.pem"], "--tls-cert needs --tls-key"),
    (["admin", "state", "--target", DEAD, "--tls-ca", "ca.pem", "--tls-key", "c.key"], "--tls-key needs --tls-cert"),
    (["detect", "--target", DEAD, "x.png", "--tls-cert", "c.pem", "--tls-key", "c.key"], "need --tls-ca"),
    (["status", "--target", DEAD, "--tls-server-name", "router"], "--tls-server-name needs --tls-ca"),
    (["load", "--target", DEAD, "--tls-ca", "/nonexistent/ca.pem"], "--tls-ca /nonexistent/ca.pem: cannot read"),
    (["eval", "--target", DEAD, "--tls-ca", "{pyproject}"], "not a PEM CA certificate"),
    (["admin", "drain", "primary", "--target", DEAD, "--token-file", "/nonexistent/token"],
     "--token-file /nonexistent/token: cannot read"),
    (["admin", "drain", "secondary", "--target", DEAD], "primary or standby"),
    (["admin", "drain", "--target", DEAD], "BACKEND"),
    (["admin", "drain", "primary", "--force", "--target", DEAD], "--force"),
    (["admin", "state"], "--target"),
    (["admin", "state", "--target", "nowhere"], "HOST:PORT"),
    (["admin", "events", "--target", DEAD, "--replay", "-1"], "--replay"),
    (["admin"], "ACTION"),
    (["load", "--target", "xds:///eagleeye-detector"], "needs --xds-server HOST:PORT"),
    (["detect", "--target", DEAD, "--xds-server", DEAD, "x.png"], "--xds-server needs --target xds:///NAME"),
    (["eval", "--target", "xds:///a/b"], "is not xds:///NAME"),
    (["bootstrap", "--xds-server", "nowhere"], "HOST:PORT"),
    (["bootstrap"], "--xds-server"),
])
def test_wrong_options_exit_2_with_one_line(argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{pyproject}", str(ROOT / "pyproject.toml")) for a in argv]
    r = run_main(argv, capsys)
    assert r.rc == 2, r
    assert expect in one_line(r.err)
    assert r.out == ""


def test_bootstrap_prints_what_grpc_clients_need(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    r = run_main(["bootstrap", "--xds-server", "10.0.0.5:50070", "--node-id", "ingest-7"], capsys)
    assert r.rc == 0
    boot = json.loads(r.out)
    (server,) = boot["xds_servers"]
    assert server["server_uri"] == "10.0.0.5:50070" and server["channel_creds"] == [{"type": "insecure"}]
    # Without it, a control plane that ever answers without a resource makes every call fail.
    assert "ignore_resource_deletion" in server["server_features"] and "xds_v3" in server["server_features"]
    assert boot["node"]["id"] == "ingest-7"
    assert boot["node"]["locality"] == {}  # grpc-js refuses a node without one


def test_unreadable_tls_files_name_the_flag_and_the_file(tmp_path: Path, certs: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.pem"
    for flag, argv in (("--tls-cert", ["--tls-cert", str(missing), "--tls-key", str(certs / "client.key")]),
                       ("--tls-key", ["--tls-cert", str(certs / "client.pem"), "--tls-key", str(missing)])):
        r = run_main(["admin", "state", "--target", DEAD, "--tls-ca", str(certs / "ca.pem"), *argv], capsys)
        assert r.rc == 2
        assert f"{flag} {missing}: cannot read" in one_line(r.err)
    # A certificate with another certificate's key.
    r = run_main(["admin", "state", "--target", DEAD, "--tls-ca", str(certs / "ca.pem"),
                  "--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "server.key")], capsys)
    assert r.rc == 2 and "matching" in one_line(r.err)


def test_an_empty_token_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "token").write_text("\n")
    r = run_main(["admin", "drain", "primary", "--target", DEAD, "--token-file", str(tmp_path / "token")], capsys)
    assert r.rc == 2 and "empty" in one_line(r.err)


def test_help_lists_admin_and_explains_the_token_and_tls(capsys: pytest.CaptureFixture[str]) -> None:
    top = run_main(["--help"], capsys)
    assert top.rc == 0 and "admin" in top.out and "--admin-listen" in top.out
    adm = run_main(["admin", "--help"], capsys)
    assert adm.rc == 0
    for word in ("state", "events", "drain", "undrain", "switch", "EAGLEEYE_ADMIN_TOKEN", "--token-file",
                 "--admin-listen", "primary or standby"):
        assert word in adm.out, word
    for command in (["detect"], ["load"], ["eval"], ["status"], ["admin", "state"], ["admin", "events"],
                    ["admin", "drain"], ["admin", "undrain"], ["admin", "switch"]):
        h = run_main([*command, "--help"], capsys)
        assert h.rc == 0
        for flag in ("--target", "--tls-ca", "--tls-cert", "--tls-key", "--tls-server-name"):
            assert flag in h.out, (command, flag)
    assert "--force" in run_main(["admin", "switch", "--help"], capsys).out


def test_loopback_hosts() -> None:
    from eagleeye.common.cli import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("10.0.0.5") and not is_loopback("router.example") and not is_loopback("0.0.0.0")


# --- admin actions against the fake router ------------------------------------------------------

async def test_drain_sends_the_backend_and_the_token_and_prints_the_state(plain: Router) -> None:
    plain.fake.reset()
    r = await cli("admin", "drain", "primary", "--target", plain.address, token=TOKEN)
    assert r.rc == 0, r.err
    [call] = plain.fake.calls
    assert call.method == "SetDrain" and call.authorization == f"Bearer {TOKEN}"
    assert call.request == rpb.SetDrainRequest(backend=rpb.BACKEND_PRIMARY, drained=True)
    assert r.out.splitlines()[0] == "drained primary"
    assert f"router {plain.address}: FAILOVER" in r.out
    assert "(drained)" in r.out  # the resulting state, from the RPC's answer


async def test_undrain_reads_the_token_file_without_its_newline(plain: Router, tmp_path: Path) -> None:
    plain.fake.reset()
    (tmp_path / "token").write_text(TOKEN + "\n")
    # The file wins over the environment.
    r = await cli("admin", "undrain", "standby", "--target", plain.address, "--token-file", str(tmp_path / "token"),
                  "--json", token="not-this-one")
    assert r.rc == 0, r.err
    [call] = plain.fake.calls
    assert call.method == "SetDrain" and call.authorization == f"Bearer {TOKEN}"
    assert call.request == rpb.SetDrainRequest(backend=rpb.BACKEND_STANDBY, drained=False)
    state = json.loads(one_line(r.out))
    assert state["state"] == "NORMAL" and len(state["backends"]) == 2


async def test_switch_force_sends_force(plain: Router) -> None:
    plain.fake.reset()
    plain.fake.standby_ready = False
    r = await cli("admin", "switch", "STANDBY", "--force", "--target", plain.address, token=TOKEN)
    assert r.rc == 0, r.err
    [call] = plain.fake.calls
    assert call.request == rpb.SwitchRequest(to=rpb.BACKEND_STANDBY, force=True)
    assert r.out.splitlines()[0] == "switched to standby (forced)"


async def test_switch_refused_prints_failed_precondition_and_exits_1(plain: Router) -> None:
    plain.fake.reset()
    plain.fake.standby_ready = False
    r = await cli("admin", "switch", "standby", "--target", plain.address, token=TOKEN)
    assert r.rc == 1 and r.out == ""
    assert one_line(r.err) == (f"eagleeye admin switch: {plain.address}: FAILED_PRECONDITION: "
                               "the standby is not ready (use force)")
    [call] = plain.fake.calls
    assert call.request == rpb.SwitchRequest(to=rpb.BACKEND_STANDBY, force=False)


async def test_a_wrong_token_prints_unauthenticated_and_exits_1(plain: Router) -> None:
    plain.fake.reset()
    r = await cli("admin", "drain", "standby", "--target", plain.address, token="wrong")
    assert r.rc == 1 and r.out == ""
    assert one_line(r.err) == f"eagleeye admin drain: {plain.address}: UNAUTHENTICATED: missing or wrong admin token"
    assert plain.fake.drained[rpb.BACKEND_STANDBY] is False
    assert [c.authorization for c in plain.fake.calls] == ["Bearer wrong"]


async def test_state_prints_what_status_prints(plain: Router) -> None:
    plain.fake.reset()
    state = await cli("admin", "state", "--target", plain.address)
    status = await cli("status", "--target", plain.address)
    assert state.rc == status.rc == 0
    assert state.out == status.out
    lines = state.out.splitlines()
    assert lines[0] == f"router {plain.address}: NORMAL"
    assert "standby" in lines[2] and "10.0.0.2:50051" in lines[2]
    assert "recent switches:" in lines and lines[-1].endswith("RECOVERING -> NORMAL, detected in 200 ms: event 2")
    as_json = json.loads(one_line((await cli("admin", "state", "--target", plain.address, "--json",
                                             "--events", "1")).out))
    assert [e["reason"] for e in as_json["recent_events"]] == ["event 2"]
    assert [c.method for c in plain.fake.calls] == ["GetState"] * 3
    assert all(c.authorization is None for c in plain.fake.calls)  # no token given, none sent


async def test_events_replay_then_follow_until_the_stream_ends(plain: Router) -> None:
    plain.fake.reset()
    r = await cli("admin", "events", "--target", plain.address, "--replay", "2")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 3
    assert "FAILOVER -> RECOVERING, detected in 100 ms: event 1" in lines[0] and "standby 90%" in lines[0]
    assert "RECOVERING -> NORMAL" in lines[1]
    assert "NORMAL -> DEGRADED: live" in lines[2]
    assert plain.fake.calls[0].request == rpb.WatchEventsRequest(replay_recent=2)
    j = await cli("admin", "events", "--target", plain.address, "--json")
    assert j.rc == 0
    [live] = [json.loads(line) for line in j.out.splitlines()]
    assert live["to_state"] == "DEGRADED" and live["reason"] == "live"


def _stacks(pid: int) -> str:
    """Every thread's stack of a live process, Python and native (py-spy, a test tool), for a hang."""
    spy = Path(sys.executable).with_name("py-spy")
    try:
        out = subprocess.run([str(spy), "dump", "--native", "--pid", str(pid)], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(py-spy failed: {e})"
    return out.stdout + out.stderr


async def test_events_follow_until_ctrl_c(plain: Router) -> None:
    plain.fake.reset()
    plain.fake.follow_forever = True
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "admin", "events", "--target", plain.address, "--replay", "1", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        live = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"event 2" in first and b"live" in live
        await asyncio.sleep(0.3)
        assert proc.returncode is None  # still following
        proc.send_signal(signal.SIGINT)
        try:
            rc = await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:  # seen once in ~200 runs: say where it stood
            pytest.fail(f"the CLI did not exit within 20 s of Ctrl-C; its threads:\n{_stacks(proc.pid)}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 130
    assert await proc.stderr.read() == b""  # no traceback
    assert await proc.stdout.read() == b""


async def test_an_unreachable_router_exits_1_with_one_line() -> None:
    r = await cli("admin", "state", "--target", DEAD)
    assert r.rc == 1
    assert one_line(r.err).startswith(f"eagleeye admin state: {DEAD}: UNAVAILABLE: ")


# --- TLS ----------------------------------------------------------------------------------------

async def test_tls_with_the_ca_works_and_plaintext_or_another_ca_fails(tls: Router, certs: Path) -> None:
    tls.fake.reset()
    ok = await cli("admin", "state", "--target", tls.address, "--tls-ca", str(certs / "ca.pem"))
    assert ok.rc == 0, ok.err
    assert ok.out.startswith(f"router {tls.address}: NORMAL")
    plaintext = await cli("admin", "state", "--target", tls.address)
    assert plaintext.rc == 1
    assert one_line(plaintext.err).startswith(f"eagleeye admin state: {tls.address}: UNAVAILABLE")
    wrong_ca = await cli("admin", "state", "--target", tls.address, "--tls-ca", str(certs / "other-ca.pem"))
    assert wrong_ca.rc == 1 and "UNAVAILABLE" in one_line(wrong_ca.err)
    status = await cli("status", "--target", tls.address, "--tls-ca", str(certs / "ca.pem"))
    assert status.rc == 0 and status.out == ok.out
    assert [c.method for c in tls.fake.calls] == ["GetState", "GetState"]


async def test_tls_server_name_overrides_the_name_checked(tls: Router, certs: Path) -> None:
    ca = str(certs / "ca.pem")
    good = await cli("admin", "state", "--target", tls.address, "--tls-ca", ca,
                     "--tls-server-name", "router.eagleeye.test")
    assert good.rc == 0, good.err
    bad = await cli("admin", "state", "--target", tls.address, "--tls-ca", ca,
                    "--tls-server-name", "elsewhere.eagleeye.test")
    assert bad.rc == 1 and "UNAVAILABLE" in one_line(bad.err)


async def test_mtls_with_a_client_certificate_works_and_without_one_fails(mtls: Router, certs: Path) -> None:
    mtls.fake.reset()
    ca = ["--tls-ca", str(certs / "ca.pem")]
    ok = await cli("admin", "drain", "primary", "--target", mtls.address, *ca,
                   "--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "client.key"), token=TOKEN)
    assert ok.rc == 0, ok.err
    assert [(c.method, c.authorization) for c in mtls.fake.calls] == [("SetDrain", f"Bearer {TOKEN}")]
    no_cert = await cli("admin", "state", "--target", mtls.address, *ca)
    assert no_cert.rc == 1 and "UNAVAILABLE" in one_line(no_cert.err)
    stranger = await cli("admin", "state", "--target", mtls.address, *ca,
                         "--tls-cert", str(certs / "stranger.pem"), "--tls-key", str(certs / "stranger.key"))
    assert stranger.rc == 1 and "UNAVAILABLE" in one_line(stranger.err)
    assert len(mtls.fake.calls) == 1
