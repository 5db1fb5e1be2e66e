"""A stand-in worker for proxy-overhead figures: the Detector API answered at once, without a model.

    python -m bench.echo_backend --listen 127.0.0.1:0 --worker-id primary

It answers every Detect with the same small DetectResponse (no decoding, no inference) and reports
every health name SERVING, so what a benchmark measures in front of it is the proxy's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.api.names import DETECTOR_SERVICE, HEADROOM, LIVENESS, READINESS_NAMES
from eagleeye.common import grpcopts
from eagleeye.common.logs import event, setup
from eagleeye.router.wire import request_frame_id

SERVICE = DETECTOR_SERVICE
log = logging.getLogger("eagleeye.echo")


async def serve(listen: str, worker: str) -> None:
    answer = pb.DetectResponse(worker=worker, detections=[pb.Detection(score=0.9, label="screen")]).SerializeToString()
    info = pb.GetModelInfoResponse(name="echo", worker=worker).SerializeToString()

    async def detect(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    async def model_info(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return info

    async def detect_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for data in requests:  # a stream's answers name their frame, as the worker's do
            yield pb.DetectResponse(frame_id=request_frame_id(data), worker=worker).SerializeToString()

    server = grpc.aio.server(options=[*grpcopts.SERVER_BASE_OPTIONS, *grpcopts.message_size_options(16 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Detect": grpc.unary_unary_rpc_method_handler(detect),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(model_info),
        "DetectStream": grpc.stream_stream_rpc_method_handler(detect_stream),
    }),))
    health = health_aio.HealthServicer()
    for name in (*READINESS_NAMES, LIVENESS, HEADROOM):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(listen)
    await server.start()
    event(log, "listening", address=f"{listen.rsplit(':', 1)[0]}:{port}", worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--worker-id", default="echo")
    args = ap.parse_args()
    setup("info")
    asyncio.run(serve(args.listen, args.worker_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
