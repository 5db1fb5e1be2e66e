"""A zero-hop client for the tests: threads calling GetModelInfo (or Detect) on `xds:///NAME`, tallied per
window.

Run as a process of its own (gRPC's xDS client reads its bootstrap once per process):

    python -m tests.xdsprobe --xds-server HOST:PORT --threads 4 --duration 20 --window 0.1

Every window it prints one JSON line to stdout, {"t": seconds since start, "primary": n, "standby": n,
"workers": {"WORKER": n}, "errors": {"CODE": n}}, after a first line {"ready": true} once a call has been
answered. `--method detect` calls Detect with a placeholder image
(for simulated workers, bench/simworker.py: through the batcher, whose answers carry its load report).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time

from eagleeye.client.dial import XDS_CHANNEL_OPTIONS, xds_bootstrap


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--xds-server", required=True)
    p.add_argument("--name", default="eagleeye-detector")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--window", type=float, default=0.1)
    p.add_argument("--deadline", type=float, default=2.0)
    p.add_argument("--method", choices=("info", "detect"), default="info")
    args = p.parse_args()
    os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(xds_bootstrap(args.xds_server, "xdsprobe"))
    import grpc  # after the bootstrap is in the environment

    from eagleeye.api.detector.v1 import detector_pb2 as pb
    from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"xds:///{args.name}", options=XDS_CHANNEL_OPTIONS)
    stub = pb_grpc.DetectorStub(channel)
    lock = threading.Lock()
    tally: collections.Counter[str] = collections.Counter()
    answered = threading.Event()
    started = time.monotonic()
    end = started + args.duration

    def work() -> None:
        while time.monotonic() < end:
            try:
                if args.method == "detect":
                    worker = stub.Detect(pb.DetectRequest(encoded=b"x"), timeout=args.deadline).worker
                else:
                    worker = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.deadline).worker
                key = worker
                answered.set()
            except grpc.RpcError as e:
                key = f"error:{e.code().name}"
            with lock:
                tally[key] += 1

    threads = [threading.Thread(target=work, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    ready_said = False
    next_at = started + args.window
    while time.monotonic() < end:
        time.sleep(max(0.0, next_at - time.monotonic()))  # the reporting period
        next_at += args.window
        with lock:
            window = dict(tally)
            tally.clear()
        if not ready_said and answered.is_set():
            print(json.dumps({"ready": True}), flush=True)
            ready_said = True
        errors = {k.split(":", 1)[1]: n for k, n in window.items() if k.startswith("error:")}
        print(json.dumps({"t": round(time.monotonic() - started, 3), "primary": window.get("primary", 0),
                          "standby": window.get("standby", 0), "errors": errors,
                          "workers": {k: n for k, n in window.items() if not k.startswith("error:")}}), flush=True)
    for t in threads:
        t.join(args.deadline + 1)
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
