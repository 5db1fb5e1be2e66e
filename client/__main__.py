"""eagleeye: the client tool for operators and ingestion workers."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

# isort: off
import eagleeye.client.quiet  # noqa: F401  (before grpc loads)
# isort: on
import grpc

from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc
from eagleeye.client import admin, annotate, dial, video
from eagleeye.client import args as args_mod
from eagleeye.client.aio import AsyncDetector
from eagleeye.client.args import add_tls_arguments, add_xds_argument, address_arg, positive_arg, target_arg
from eagleeye.client.dial import UsageError, channel
from eagleeye.client.errors import EagleEyeError
from eagleeye.client.progress import Progress
from eagleeye.client.types import Result
from eagleeye.common.cli import OneLineParser
from eagleeye.common.telemetry import Telemetry, tracing_configured
from eagleeye.common.telemetry import setup as telemetry_setup

PROG = "eagleeye"

DESCRIPTION = """\
eagleeye: the client tool for operators and ingestion workers.

detect, load and eval send images to a worker or to the router's client port; status and the
admin commands talk to the router's admin listener (its --admin-listen address). Every command
that dials takes --target HOST:PORT and, for TLS, --tls-ca FILE (plus --tls-cert/--tls-key for
mTLS). `eagleeye COMMAND --help` explains each one."""

_TELEMETRY: list[Telemetry] = []
TARGET_HELP = ("a worker, the router's client port, or xds:///eagleeye-detector with --xds-server "
               "(the workers called directly, as the router decides)")


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 16 or int(h) < 16:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (each >= 16), e.g. 640x360")
    return int(w), int(h)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                      add_version=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    d = sub.add_parser("detect", help="detect objects in image files or folders",
                       description="Detect objects in image files, or in the JPEG and PNG files of folders.")
    d.add_argument("--target", required=True, type=target_arg, metavar="HOST:PORT",
                   help=TARGET_HELP)
    d.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG or PNG files, or folders of them")
    d.add_argument("--annotate", type=Path, metavar="DIR",
                   help="also write each image with its detections drawn into DIR (same file name)")
    d.add_argument("--score-threshold", type=float, metavar="S", help="keep detections scoring at least S")
    d.add_argument("--classes", metavar="A,B", help="only these class labels")
    d.add_argument("--timeout", type=positive_arg, default=10.0, metavar="S", help="deadline per image (default 10)")
    d.add_argument("--json", action="store_true", help="print one JSON object per image")
    add_tls_arguments(d)
    add_xds_argument(d)

    lo = sub.add_parser("load", help="send synthetic video frames at a fixed rate",
                        description="Send synthetic video frames at a fixed rate, as an ingestion worker "
                                    "would, and report what came back. The last line is JSON with --json.")
    lo.add_argument("--target", required=True, type=target_arg, metavar="HOST:PORT",
                    help=TARGET_HELP)
    lo.add_argument("--mode", choices=["unary", "stream"], default="stream",
                    help="one Detect per frame, or every frame over one DetectStream (default stream)")
    lo.add_argument("--rate", type=positive_arg, default=20.0, metavar="N", help="frames per second (default 20)")
    lo.add_argument("--duration", type=positive_arg, default=10.0, metavar="S", help="seconds (default 10)")
    lo.add_argument("--size", type=_size, default=(320, 240), metavar="WxH", help="frame size (default 320x240)")
    lo.add_argument("--format", choices=["jpeg", "png", "raw"], default="jpeg", help="frame encoding (default jpeg)")
    lo.add_argument("--deadline", type=positive_arg, default=5.0, metavar="S", help="per unary call (default 5)")
    lo.add_argument("--client", choices=["library", "naive"], default="library",
                    help="through the client library (streams reopened and replayed, unary calls retried: "
                         "the default), or a naive client on the raw stub, for comparison")
    lo.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    add_tls_arguments(lo)
    add_xds_argument(lo)

    st = sub.add_parser("status", help="a router's state, weights, backend health and recent switches",
                        description="Show a router's state, the weight and health of each backend, and its "
                                    "last switch events (the same as `eagleeye admin state`). --target is the "
                                    "router's admin listener (its --admin-listen address), not its client port.")
    st.add_argument("--target", required=True, type=target_arg, metavar="HOST:PORT",
                    help="the router's admin listener (its --admin-listen address)")
    st.add_argument("--events", type=int, default=10, metavar="N", help="how many recent events (default 10)")
    st.add_argument("--json", action="store_true", help="print the state as one JSON object")
    add_tls_arguments(st)

    ev = sub.add_parser("eval", help="mAP@0.5 of the served model on held-out synthetic scenes",
                        description="mAP@0.5 of the served model on N held-out synthetic scenes (seeded, so "
                                    "every run sees the same scenes).")
    ev.add_argument("--target", required=True, type=target_arg, metavar="HOST:PORT",
                    help=TARGET_HELP)
    ev.add_argument("--images", type=int, default=300, metavar="N", help="scenes to evaluate (default 300)")
    ev.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_tls_arguments(ev)
    add_xds_argument(ev)

    bo = sub.add_parser("bootstrap", help="print a gRPC xDS bootstrap for zero-hop clients",
                        description="Print the JSON bootstrap a gRPC client needs to take the router's decisions "
                                    "over xDS and call the workers directly (zero-hop mode): put it in a file "
                                    "named by GRPC_XDS_BOOTSTRAP, or in GRPC_XDS_BOOTSTRAP_CONFIG, and dial "
                                    "xds:///eagleeye-detector. See docs/zero-hop.md.")
    bo.add_argument("--xds-server", required=True, type=address_arg, metavar="HOST:PORT",
                    help="the router's control plane (its --xds-listen address), as the clients reach it")
    bo.add_argument("--node-id", metavar="ID",
                    help="how the router lists this client in `eagleeye status` (default: host name and pid)")

    vi = video.add_parser(sub, TARGET_HELP)
    add_tls_arguments(vi)
    add_xds_argument(vi)

    admin.add_admin_parser(sub)
    return p


def _print(obj: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(obj) if as_json else text, flush=True)


async def cmd_detect(args: argparse.Namespace) -> int:
    classes = [c for c in (args.classes or "").split(",") if c]
    images = annotate.expand(args.images)
    if not images:
        print(f"{PROG} detect: no JPEG or PNG files in {', '.join(map(str, args.images))}", file=sys.stderr)
        return 1
    if args.annotate is not None:
        try:
            args.annotate.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"{PROG} detect: --annotate {args.annotate}: {e.strerror}", file=sys.stderr)
            return 2
    progress = Progress("images", len(images)) if len(images) > 1 and sys.stderr.isatty() else None
    failed = 0
    async with AsyncDetector(args.target, tls=args.tls, timeout=args.timeout) as det:
        for path in images:
            if progress is not None:
                progress.clear()
            failed += not await _detect_one(det, path, classes, args)
            if progress is not None:
                progress.step()
    if progress is not None:
        progress.done()
    return 1 if failed else 0


async def _detect_one(det: AsyncDetector, path: Path, classes: list[str], args: argparse.Namespace) -> bool:
    """Detect in one image file and print the result; False (said on stderr) if it failed."""
    try:
        data = path.read_bytes()
    except OSError as e:
        print(f"{path}: cannot read: {e.strerror}", file=sys.stderr)
        return False
    try:
        resp = await det.detect(data, score_threshold=args.score_threshold, classes=classes)
    except EagleEyeError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return False
    dets = [{"label": d.label, "class_id": d.class_id, "score": round(d.score, 4),
             "box": [round(v, 1) for v in (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)]}
            for d in resp.detections]
    lines = [f"{path}: {len(dets)} objects ({resp.image_width}x{resp.image_height}, "
             f"{resp.timing.total_ms:.1f} ms on {resp.worker})"]
    lines += [f"  {d['label']:<10} {d['score']:.2f}  box {d['box']}" for d in dets]
    _print({"image": str(path), "width": resp.image_width, "height": resp.image_height,
            "worker": resp.worker, "total_ms": round(resp.timing.total_ms, 2), "detections": dets},
           args.json, "\n".join(lines))
    return args.annotate is None or _write_annotated(path, data, resp, args.annotate)


def _write_annotated(path: Path, data: bytes, resp: Result, folder: Path) -> bool:
    """Write `path`'s image with `resp`'s detections drawn into `folder`; False (said on stderr) if not."""
    import io

    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            # The worker's boxes are in the upright image (EXIF orientation applied), as a person sees it.
            drawn = annotate.draw(ImageOps.exif_transpose(img), resp.detections)
        target = folder / path.name
        drawn.save(target, format="PNG" if path.suffix.lower() == ".png" else "JPEG", quality=92)
        return True
    except (OSError, ValueError) as e:
        print(f"{path}: cannot write the annotated image: {e}", file=sys.stderr)
        return False


async def cmd_load(args: argparse.Namespace) -> int:
    from eagleeye.client.aio import AsyncDetector
    from eagleeye.client.frames import make_pool
    from eagleeye.client.load import (
        LoadPlan,
        print_progress,
        run_library_stream,
        run_library_unary,
        run_stream,
        run_unary,
    )

    w, h = args.size
    pool = make_pool(w, h, args.format)
    plan = LoadPlan(rate=args.rate, duration=args.duration, deadline_s=args.deadline)
    print(f"sending {round(args.rate * args.duration)} {w}x{h} {args.format} frames "
          f"({pool.payload_bytes} bytes each) at {args.rate:g}/s to {args.target}, {args.mode}", file=sys.stderr)
    started = time.monotonic()
    if args.client == "naive":
        async with channel(args.target, args.tls) as ch:
            stub = pb_grpc.DetectorStub(ch)
            run = run_unary if args.mode == "unary" else run_stream
            tally = await run(stub, pool, plan, print_progress)
    else:
        async with AsyncDetector(args.target, tls=args.tls, timeout=args.deadline) as det:
            library_run = run_library_unary if args.mode == "unary" else run_library_stream
            tally = await library_run(det, pool, plan, print_progress)
    summary = tally.summary(mode=args.mode, client=args.client, rate=args.rate,
                            duration_s=round(time.monotonic() - started, 2),
                            frame_bytes=pool.payload_bytes)
    text = (f"sent {summary['sent']}  answered {summary['answered']}  errors {summary['errors']}  "
            f"lost {summary['lost']}  duplicated {summary['duplicated']}  "
            f"reordered {'-' if summary['reordered'] is None else summary['reordered']}\n"
            + ("latency: no answers" if summary["p50_ms"] is None else
               f"latency p50 {summary['p50_ms']} ms  p95 {summary['p95_ms']} ms  p99 {summary['p99_ms']} ms"))
    if summary["error_codes"]:
        text += f"\nerrors by code: {summary['error_codes']}"
    if len(summary["by_worker"]) > 1:
        text += "\nanswered by: " + ", ".join(f"{w} {n}" for w, n in sorted(summary["by_worker"].items()))
    _print(summary, args.json, text)
    return 0 if summary["errors"] == 0 and summary["lost"] == 0 else 1


async def cmd_eval(args: argparse.Namespace) -> int:
    from eagleeye.client.evaluate import Prediction, mean_average_precision
    from eagleeye.scenes import HELD_OUT_SEED_BASE, encode_png, make_scene

    if args.images < 1:
        print(f"{PROG} eval: error: --images must be >= 1", file=sys.stderr)
        return 2
    scenes = [make_scene(HELD_OUT_SEED_BASE + i) for i in range(args.images)]
    preds: list[Prediction] = []
    sem = asyncio.Semaphore(4)
    async with AsyncDetector(args.target, tls=args.tls) as det:
        info = await det.model_info()

        async def one(i: int) -> None:
            async with sem:
                resp = await det.detect(encode_png(scenes[i].image), score_threshold=0.05, max_detections=100)
            preds.extend(Prediction(i, d.class_id, d.score, (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max))
                         for d in resp.detections)

        await asyncio.gather(*(one(i) for i in range(len(scenes))))
    m, per_class = mean_average_precision(preds, [s.boxes for s in scenes], [s.classes for s in scenes],
                                          len(info.classes))
    result: dict[str, Any] = {"map50": round(m, 4), "images": len(scenes), "model": f"{info.name}:{info.version}",
              "per_class_ap50": {info.classes[c]: round(ap, 4) for c, ap in per_class.items()},
              "objects": int(sum(len(s.boxes) for s in scenes))}
    _print(result, args.json, f"mAP@0.5 {m:.4f} on {len(scenes)} held-out scenes "
                              f"({result['objects']} objects), model {result['model']}\n"
                              + "\n".join(f"  {k:<10} AP50 {v:.4f}" for k, v in result["per_class_ap50"].items()))
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    state = await admin.get_state(args.target, args.tls, args.token, timeout=5)
    admin.print_state(args.target, state, args.events, args.json)
    return 0


async def cmd_admin(args: argparse.Namespace) -> int:
    return await admin.run(args, _prog(args))


async def cmd_bootstrap(args: argparse.Namespace) -> int:
    print(json.dumps(dial.xds_bootstrap(args.xds_server, args.node_id or dial.default_node_id()), indent=2))
    return 0


COMMANDS = {"detect": cmd_detect, "load": cmd_load, "eval": cmd_eval, "status": cmd_status, "admin": cmd_admin,
            "bootstrap": cmd_bootstrap, "video": video.cmd_video}


def _prog(args: argparse.Namespace) -> str:
    """How errors name the command: `eagleeye status`, `eagleeye admin drain`."""
    return f"{PROG} {args.command}" + (f" {args.action}" if args.command == "admin" else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = _prog(args)
    try:
        # Everything an action needs from files is read and checked before dialing.
        args.tls = args_mod.tls_from_args(args) if args.command != "bootstrap" else None
        if args.command in ("detect", "load", "eval", "video"):
            dial.use_xds(args.target, args.xds_server)
        needs_token = args.command == "admin" and args.action in admin.ACTIONS
        args.token = admin.read_token(args, required=needs_token) if args.command in ("admin", "status") else None
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if tracing_configured():  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT: each call starts a trace here
        _TELEMETRY.append(telemetry_setup("eagleeye", f"eagleeye {args.command}", None))
        dial.INTERCEPTORS.extend(_TELEMETRY[0].client_interceptors())
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except grpc.aio.AioRpcError as e:
        print(admin.error_line(prog, args.target, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for tel in _TELEMETRY:
            tel.shutdown()
        _TELEMETRY.clear()
        dial.INTERCEPTORS.clear()


if __name__ == "__main__":
    sys.exit(main())
