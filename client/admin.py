"""`eagleeye admin`: read a router's state and switch events, drain, undrain and switch its backends.

These commands talk to the router's admin listener (the router's --admin-listen address), not to
its client port. Reads need nothing; actions need the admin token the router was started with,
from the environment (EAGLEEYE_ADMIN_TOKEN) or a file (--token-file), never from a plain flag,
which would show in `ps`. It goes as gRPC metadata `authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from eagleeye.api.router.v1 import router_pb2 as rpb
from eagleeye.api.router.v1 import router_pb2_grpc as rpb_grpc
from eagleeye.client.args import add_tls_arguments, positive_arg, target_arg
from eagleeye.client.dial import Tls, UsageError, channel
from eagleeye.common.cli import OneLineParser, is_loopback, parse_host_port
from eagleeye.common.printable import SHOWN_LIMIT, printable

TOKEN_ENV = "EAGLEEYE_ADMIN_TOKEN"
BACKENDS: dict[str, rpb.Backend] = {"primary": rpb.BACKEND_PRIMARY, "standby": rpb.BACKEND_STANDBY}
ACTIONS = ("drain", "undrain", "switch")  # the ones that need the token
ACTION_EVENTS = 5  # recent events shown with the state an action prints

ADMIN_DESCRIPTION = """\
Operate a router through its admin listener: the address the router was started with as
--admin-listen (not its client port, which does not serve the admin API).

  state and events only read. With a token set, events has it checked and follows as an
  operator; without one a router serves a few event streams per client (more: RESOURCE_EXHAUSTED).
  drain, undrain and switch change where traffic goes. They need the router's admin token:
  set EAGLEEYE_ADMIN_TOKEN, or pass --token-file FILE (a file holding the token; a trailing
  newline is ignored). The token is sent as 'authorization: Bearer TOKEN'; use --tls-ca so it
  does not cross the network in clear. Each action prints the router's state afterwards.

BACKEND is primary or standby."""

EXIT_CODES = """\
exit codes: 0 done; 1 the router refused or could not be reached, and the line says why:
UNAUTHENTICATED (wrong token), PERMISSION_DENIED (the router allows no such action),
FAILED_PRECONDITION (e.g. the standby is not ready), RESOURCE_EXHAUSTED (a wrong token from this
address a moment ago: retry after the seconds named; or too many event streams without a token),
UNAVAILABLE (no connection, or TLS on one side only or with the wrong CA); 2 wrong options or an
unreadable file; 130 Ctrl-C."""

ADMIN_EPILOG = """\
examples:
  eagleeye admin state --target 10.0.0.5:50059 --tls-ca ca.pem
  eagleeye admin events --target 10.0.0.5:50059 --tls-ca ca.pem --replay 20
  EAGLEEYE_ADMIN_TOKEN=... eagleeye admin drain primary --target 10.0.0.5:50059 --tls-ca ca.pem
  eagleeye admin undrain primary --target 10.0.0.5:50059 --tls-ca ca.pem --token-file /run/secrets/admin-token
  eagleeye admin switch standby --force --target 10.0.0.5:50059 --tls-ca ca.pem --token-file token

""" + EXIT_CODES


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _backend(text: str) -> str:
    name = text.lower()
    if name not in BACKENDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a backend: choose primary or standby")
    return name


def _worker(text: str) -> str:
    """primary, standby, or one worker of a pool by its name (ROLE/HOST:PORT, as `state` lists it)."""
    role, slash, address = text.partition("/")
    if not slash:
        return _backend(text)
    if role.lower() not in BACKENDS or not address:
        raise argparse.ArgumentTypeError(f"{text!r} is not a backend: choose primary, standby, or a pool worker's "
                                         "name as `eagleeye admin state` lists it (e.g. primary/10.0.0.2:50051)")
    return f"{role.lower()}/{address}"


def add_admin_parser(sub: Any) -> None:
    """`eagleeye admin ACTION ...` under the top-level subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    admin = sub.add_parser("admin", help="operate a router: state, events, drain, undrain, switch (admin listener)",
                           description=ADMIN_DESCRIPTION, epilog=ADMIN_EPILOG, formatter_class=fmt)
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=OneLineParser)

    def action(name: str, summary: str, description: str, token: str) -> OneLineParser:
        p: OneLineParser = actions.add_parser(name, help=summary, description=description,
                                              epilog=EXIT_CODES)
        p.add_argument("--target", required=True, type=target_arg, metavar="HOST:PORT",
                       help="the router's admin listener (its --admin-listen address)")
        p.add_argument("--token-file", type=Path, metavar="FILE",
                       help=f"read the admin token from FILE instead of ${TOKEN_ENV}; {token}")
        if name != "events":
            p.add_argument("--timeout", type=positive_arg, default=5.0, metavar="S",
                           help="deadline of the call in seconds (default 5)")
        add_tls_arguments(p)
        return p

    st = action("state", "the router's state, weights, backend health and recent switches",
                "Show the router's state (NORMAL, DEGRADED, FAILOVER, RECOVERING, STANDBY_DOWN or BOTH_DOWN), "
                "the address, health and share of traffic of each backend, and its last switch events.",
                "optional here (sent when given)")
    st.add_argument("--events", type=_count, default=10, metavar="N", help="how many recent events (default 10)")
    st.add_argument("--json", action="store_true", help="print the state as one JSON object")

    ev = action("events", "follow switch events as they happen (Ctrl-C to stop)",
                "Print the router's switch events as they happen, one line each, until Ctrl-C or until the "
                "router ends the stream. --replay N prints the N most recent events first.",
                "optional here (sent when given)")
    ev.add_argument("--replay", type=_count, default=0, metavar="N",
                    help="first print the N most recent events (default 0: only new ones)")
    ev.add_argument("--json", action="store_true", help="print one JSON object per event")

    for name, summary, description in (
        ("drain", "take BACKEND out of rotation (no new traffic) for maintenance",
         "Take BACKEND out of rotation: the router sends it no new traffic until `undrain`. Draining the "
         "primary moves traffic to the standby; check with `state` that the standby is ready first."),
        ("undrain", "put a drained BACKEND back into rotation",
         "Put BACKEND back into rotation (the end of maintenance). The router gives it traffic again as "
         "soon as it is ready."),
        ("switch", "move traffic to BACKEND now",
         "Move traffic to BACKEND now. To standby: drains the primary; the router refuses "
         "(FAILED_PRECONDITION) while the standby is not ready, unless --force. To primary: undrains it "
         "and skips the current hold-down (the ramp back still applies)."),
    ):
        p = action(name, summary, description, "one of the two is required")
        if name == "switch":
            p.add_argument("backend", type=_backend, metavar="BACKEND", help="primary or standby")
        else:
            p.add_argument("backend", type=_worker, metavar="BACKEND",
                           help="primary or standby (in a pool: every worker of that role), or one pool worker "
                                "by its name, e.g. primary/10.0.0.2:50051")
        if name == "switch":
            p.add_argument("--force", action="store_true",
                           help="switch to the standby even though it is not ready (every request may then fail)")
        p.add_argument("--json", action="store_true", help="print the resulting state as one JSON object")


def read_token(args: argparse.Namespace, required: bool) -> str | None:
    """The admin token from --token-file or $EAGLEEYE_ADMIN_TOKEN; UsageError if required and absent."""
    path: Path | None = getattr(args, "token_file", None)
    if path is not None:
        try:
            token = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise UsageError(f"--token-file {path}: cannot read ({why})") from None
        if not token:
            raise UsageError(f"--token-file {path}: the file is empty")
        source = f"--token-file {path}"
    else:
        token = os.environ.get(TOKEN_ENV, "")
        source = f"${TOKEN_ENV}"
        if not token:
            if required:
                raise UsageError(f"no admin token: set {TOKEN_ENV} or pass --token-file FILE (drain, undrain and "
                                 "switch need the token the router was started with)")
            return None
    if not token.isascii() or not token.isprintable():
        raise UsageError(f"{source}: the token must be printable ASCII on one line (it goes in a gRPC header)")
    return token


def _event_time(e: rpb.SwitchEvent, fmt: str) -> str:
    return time.strftime(fmt, time.localtime(e.time_unix))


def _event_core(e: rpb.SwitchEvent) -> str:
    detect = f", detected in {e.detection_ms:.0f} ms" if e.detection_ms else ""
    where = f"[{e.worker}] " if e.worker else ""
    return f"{where}{e.from_state} -> {e.to_state}{detect}: {e.reason}"


def event_line(e: rpb.SwitchEvent) -> str:
    """One switch event as `eagleeye admin events` prints it."""
    return (f"{_event_time(e, '%Y-%m-%d %H:%M:%S')} {_event_core(e)} "
            f"(weights primary {e.primary_weight:.0f}%, standby {e.standby_weight:.0f}%)")


def _as_dict(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    return out


def print_state(target: str, state: rpb.RouterState, events: int, as_json: bool) -> None:
    """The router's state as `eagleeye status` and `eagleeye admin state` print it."""
    recent = list(state.recent_events)[-events:] if events > 0 else []
    if as_json:
        out = _as_dict(state)
        out["recent_events"] = out["recent_events"][-events:] if events > 0 else []
        print(json.dumps(out), flush=True)
        return
    print(f"router {target}: {state.state}")
    if state.state == "RECOVERING":
        print(f"  hold-down left {state.hold_down_remaining_s:.1f} s, ramp {state.ramp_progress:.0%}")
    for b in state.backends:
        name = b.name or rpb.Backend.Name(b.backend).removeprefix("BACKEND_").lower()
        health = "ready" if b.ready else "NOT READY"
        extra = [x for x, on in (("no headroom", not b.headroom and b.ready), ("drained", b.drained),
                                 ("ejected", b.ejected)) if on]
        shown = f"{name:<8} {b.address:<22}" if "/" not in name else f"{name:<31}"
        load = f"  load: {b.outstanding} here" + (
            f", reports queue {b.reported_queue:g}, busy {b.reported_utilization:.0%}"
            if b.HasField("reported_queue") and b.HasField("reported_utilization") else "")
        print(f"  {shown} weight {b.weight:5.1f}%  {health}"
              + (f" ({', '.join(extra)})" if extra else "") + load + (f"  - {b.reason}" if b.reason else ""))
    if state.xds_endpoints_version:
        current = sum(c.endpoints_version == state.xds_endpoints_version for c in state.xds_clients)
        print(f"xDS clients: {len(state.xds_clients)} connected, {current} on assignment "
              f"{state.xds_endpoints_version}")
        for c in state.xds_clients:  # the clients' own text, shown printable and cut (whatever the router sent)
            mark = "current" if c.endpoints_version == state.xds_endpoints_version else \
                f"on {printable(c.endpoints_version) or 'nothing yet'}"
            print(f"  {printable(c.node_id) or '(no node id)'} {printable(c.peer)} {mark}"
                  + (f"  - NACK {printable(c.nack, 4 * SHOWN_LIMIT)}" if c.nack else ""))
    if recent:
        print("recent switches:")
    for e in recent:
        print(f"  {_event_time(e, '%H:%M:%S')} {_event_core(e)}")
    sys.stdout.flush()


async def get_state(target: str, tls: Tls | None, token: str | None, timeout: float) -> rpb.RouterState:
    async with channel(target, tls) as ch:
        answer: rpb.GetStateResponse = await rpb_grpc.RouterAdminStub(ch).GetState(
            rpb.GetStateRequest(), timeout=timeout, metadata=_metadata(token))
    return answer.state


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


async def run(args: argparse.Namespace, prog: str) -> int:
    """Carry out `eagleeye admin ACTION` (args.tls and args.token already checked)."""
    tls: Tls | None = args.tls
    token: str | None = args.token
    if token and tls is None and not is_loopback(parse_host_port('--target', args.target)[0]):
        print(f"{prog}: warning: sending the admin token in clear to {args.target}; use --tls-ca", file=sys.stderr)
    if args.action == "state":
        print_state(args.target, await get_state(args.target, tls, token, args.timeout), args.events, args.json)
        return 0
    async with channel(args.target, tls) as ch:
        stub = rpb_grpc.RouterAdminStub(ch)
        if args.action == "events":
            call = stub.WatchEvents(rpb.WatchEventsRequest(replay_recent=args.replay), metadata=_metadata(token))
            async for answer in call:
                e = answer.event
                print(json.dumps(_as_dict(e)) if args.json else event_line(e), flush=True)
            print(f"{prog}: {args.target}: the router ended the event stream", file=sys.stderr)
            return 0
        backend = BACKENDS[args.backend.partition("/")[0]]
        worker = args.backend if "/" in args.backend else ""
        if args.action == "switch":
            state = (await stub.Switch(rpb.SwitchRequest(to=backend, force=args.force),
                                       timeout=args.timeout, metadata=_metadata(token))).state
            done = f"switched to {args.backend}" + (" (forced)" if args.force else "")
        else:
            drained = args.action == "drain"
            state = (await stub.SetDrain(rpb.SetDrainRequest(backend=backend, drained=drained, worker=worker),
                                         timeout=args.timeout, metadata=_metadata(token))).state
            done = f"{args.action}ed {args.backend}"
    if not args.json:
        print(done)
    print_state(args.target, state, ACTION_EVENTS, args.json)
    return 0


def error_line(prog: str, target: str, error: grpc.aio.AioRpcError) -> str:
    return f"{prog}: {target}: {error.code().name}: {error.details()}"
