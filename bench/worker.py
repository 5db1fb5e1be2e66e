"""The worker's own cost: the bare model against a worker process, at batch 1 and saturated.

    python -m bench.worker [--runs 200] [--seconds 6] [--callers 16] [--backends torch,onnxruntime]
                           [--inputs raw,jpeg] [--threads 1] [--out bench/out]

For each backend (the embedded model as .pt2 on torch, as .onnx on ONNX Runtime) and input (raw
256x256 RGB frames: no decode, no resize; or the same frame as a JPEG):

- bare, batch 1: `model.infer` on one letterboxed frame in this process, p50 and p99 of `--runs`;
- worker, batch 1: one Detect call at a time to an eagleeye-detector on 127.0.0.1 (the same model and
  thread count), p50 and p99 as the caller sees them; the difference is what the worker adds;
- bare, batch 8: images/s of back-to-back `infer` on 8 frames;
- worker, saturated: images/s answered to `--callers` concurrent callers for `--seconds`, and that as a
  share of the bare batch-8 rate.

The caller runs in this process, on the same machine: its own CPU is part of what the worker competes
with, as in any single-machine measurement. Prints one JSON line per row and a Markdown table with
the command and the machine; with --out, writes worker.json and worker.md there. Figures, not
assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from eagleeye.harness.processes import Proc

BATCH = 8


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def frame() -> np.ndarray:
    from eagleeye.scenes import make_scene

    return make_scene(7, size=(256, 256)).image


def load(backend: str, threads: int) -> Any:
    import torch

    from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH

    torch.set_num_threads(threads)
    if backend == "onnxruntime":
        from eagleeye.detector.onnxmodel import OnnxDetector

        return OnnxDetector(DEFAULT_ONNX_PATH, "cpu", False, threads=threads)
    from eagleeye.detector.model import load_model

    return load_model(DEFAULT_MODEL_PATH, "cpu", half=False)


def bare(model: Any, image: np.ndarray, runs: int) -> dict[str, float]:
    from eagleeye.detector.imaging import letterbox

    pixels, _ = letterbox(image, model.meta.input_size)
    one, eight = pixels[None], np.stack([pixels] * BATCH)
    for _ in range(5):
        model.infer(one)
        model.infer(eight)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.infer(one)
        times.append(time.perf_counter() - start)
    batch_times = []
    for _ in range(max(10, runs // 8)):
        start = time.perf_counter()
        model.infer(eight)
        batch_times.append(time.perf_counter() - start)
    return {"p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * _percentile(times, 99),
            "batch8_images_s": BATCH / statistics.median(batch_times)}


def request(image: np.ndarray, kind: str) -> Any:
    from eagleeye.api.detector.v1 import detector_pb2 as pb
    from eagleeye.scenes import encode_jpeg

    if kind == "jpeg":
        return pb.DetectRequest(encoded=encode_jpeg(image, 90))
    h, w = image.shape[:2]
    return pb.DetectRequest(raw=pb.RawImage(data=image.tobytes(), width=w, height=h))


async def worker_rows(address: str, req: Any, runs: int, seconds: float, callers: int) -> dict[str, float]:
    import grpc

    from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectorStub(channel)
        for _ in range(10):
            await stub.Detect(req, timeout=30)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            await stub.Detect(req, timeout=30)
            times.append(time.perf_counter() - start)
        answered = 0
        end = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal answered
            while time.monotonic() < end:
                await stub.Detect(req, timeout=30)
                answered += 1

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.monotonic() - started
    return {"p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * _percentile(times, 99),
            "saturated_images_s": answered / elapsed}


def start_worker(backend: str, threads: int, extra: list[str]) -> Proc:
    proc = Proc("eagleeye-detector", ["--listen", "127.0.0.1:0", "--backend", backend, "--torch-threads",
                                      str(threads), "--log-level", "warning", *extra])
    try:
        proc.wait_listening()
        proc.wait_for_event("model ready", 120)
    except BaseException:
        proc.stop()
        raise
    return proc


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200, help="batch-1 calls timed per row (default 200)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each saturated run (default 6)")
    p.add_argument("--callers", type=int, default=16, help="concurrent callers when saturated (default 16)")
    p.add_argument("--backends", default="torch,onnxruntime")
    p.add_argument("--inputs", default="raw,jpeg")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads, model and worker (default 1)")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                   help="an extra eagleeye-detector argument (repeat), e.g. --worker-arg=--max-queue-delay-ms=3")
    p.add_argument("--out", type=Path, help="write worker.json and worker.md into this folder")
    args = p.parse_args()
    image = frame()
    rows: list[dict[str, Any]] = []
    for backend in args.backends.split(","):
        model = load(backend, args.threads)
        base = bare(model, image, args.runs)
        del model
        proc = start_worker(backend, args.threads, args.worker_arg)
        try:
            for kind in args.inputs.split(","):
                print(f"{backend}, {kind}: {args.runs} calls at batch 1, then {args.callers} callers for "
                      f"{args.seconds:g} s", file=sys.stderr, flush=True)
                got = asyncio.run(worker_rows(proc.address, request(image, kind), args.runs, args.seconds,
                                              args.callers))
                row = {"backend": backend, "input": kind,
                       "bare_p50_ms": round(base["p50_ms"], 2), "bare_p99_ms": round(base["p99_ms"], 2),
                       "worker_p50_ms": round(got["p50_ms"], 2), "worker_p99_ms": round(got["p99_ms"], 2),
                       "added_p50_ms": round(got["p50_ms"] - base["p50_ms"], 2),
                       "bare_batch8_images_s": round(base["batch8_images_s"], 1),
                       "saturated_images_s": round(got["saturated_images_s"], 1),
                       "saturated_share": round(got["saturated_images_s"] / base["batch8_images_s"], 3)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.stop()
    command = "python -m bench.worker " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} " \
              f"{platform.python_version()}, {args.threads} intra-op thread(s), CPU inference"
    lines = [f"`{command.strip()}` on {machine}", "",
             "| backend | input | bare p50 / p99 ms | worker p50 / p99 ms | added p50 ms | bare batch-8 img/s "
             f"| worker, {args.callers} callers img/s | share |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['input']} | {r['bare_p50_ms']} / {r['bare_p99_ms']} | {r['worker_p50_ms']} / "
              f"{r['worker_p99_ms']} | {r['added_p50_ms']} | {r['bare_batch8_images_s']} | "
              f"{r['saturated_images_s']} | {100 * r['saturated_share']:.0f} % |" for r in rows]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "worker.json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows},
                                                         indent=2) + "\n")
        (args.out / "worker.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
