"""The worker's own cost: the bare model against a worker process, at batch 1 and saturated.

    python -m bench.worker [--runs 300] [--seconds 9] [--rounds 3] [--callers 16]
                           [--backends torch,onnxruntime,null] [--inputs raw,jpeg] [--threads 1] [--out bench/out]

For each backend (the embedded model as .pt2 on torch, as .onnx on ONNX Runtime; `null`: torch with a
model that does almost nothing, so the worker's own cost is seen without a CPU model's convolutions
around it) and input (raw 256x256 RGB frames: no decode, no resize; or the same frame as a JPEG):

- bare, batch 1: `model.infer` on one letterboxed frame in this process, p50 and p99 of `--runs`;
- worker, batch 1: one Detect call at a time to an eagleeye-detector on 127.0.0.1 (the same model and
  thread count), p50 and p99 as the caller sees them; the difference is what the worker adds;
- bare, batch 8: images/s of back-to-back `infer` on 8 frames;
- worker, saturated: images/s answered to `--callers` concurrent callers, and that as a share of the
  bare batch-8 rate.

Bare and worker take turns (`--rounds`), so a slow spell of a shared machine falls on both alike.

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
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eagleeye.harness.processes import Proc

BATCH = 8
# A backend of its own in --backends: torch with null_model(), so that the worker's own cost is seen
# without a CPU model's 10 ms of convolutions between requests (on a CPU they evict the caches the
# request path then runs from cold, which a GPU's forward pass does not).
NULL = "null"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def frame() -> np.ndarray:
    from eagleeye.scenes import make_scene

    return make_scene(7, size=(256, 256)).image


def null_model(folder: Path) -> Path:
    """A .pt2 following the model contract that does almost nothing (a mean of the input, five fixed
    boxes): the worker around it is then nearly all there is to measure."""
    import torch

    from eagleeye.detector.model import export_model

    class Null(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            n, m = x.shape[0], x.mean(dim=(1, 2, 3))
            fixed = torch.tensor([[10.0, 10.0, 60.0, 60.0], [100.0, 100.0, 180.0, 200.0], [20.0, 150.0, 90.0, 240.0],
                                  [5.0, 5.0, 40.0, 40.0], [150.0, 20.0, 250.0, 90.0]])
            boxes = fixed.expand(n, 5, 4) + m[:, None, None]
            scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]).expand(n, 5) + 0 * m[:, None]
            return boxes.contiguous(), scores.contiguous(), torch.tensor([0, 1, 2, 0, 1]).expand(n, 5).contiguous()

    path = folder / "null.pt2"
    export_model(Null(), path, name="null", version="1", classes=("person", "car", "bicycle"), input_size=(256, 256))
    return path


def load(backend: str, threads: int, path: Path | None = None) -> Any:
    import torch

    from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH

    torch.set_num_threads(threads)
    if path is not None:
        from eagleeye.detector.model import load_model

        return load_model(path, "cpu", half=False)
    if backend == "onnxruntime":
        from eagleeye.detector.onnxmodel import OnnxDetector

        return OnnxDetector(DEFAULT_ONNX_PATH, "cpu", False, threads=threads)
    from eagleeye.detector.model import load_model

    return load_model(DEFAULT_MODEL_PATH, "cpu", half=False)


def model_input(model: Any, image: np.ndarray) -> np.ndarray:
    from eagleeye.detector.imaging import letterbox

    return letterbox(image, model.meta.input_size)[0]


def bare_batch1(model: Any, pixels: np.ndarray, runs: int) -> list[float]:
    one = pixels[None]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.infer(one)
        times.append(time.perf_counter() - start)
    return times


def bare_saturated(model: Any, pixels: np.ndarray, seconds: float) -> tuple[int, float]:
    """Images and seconds of back-to-back batch-8 forwards for about `seconds`."""
    eight = np.stack([pixels] * BATCH)
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.infer(eight)
        images += BATCH
    return images, time.perf_counter() - started


def request(image: np.ndarray, kind: str) -> Any:
    from eagleeye.api.detector.v1 import detector_pb2 as pb
    from eagleeye.scenes import encode_jpeg

    if kind == "jpeg":
        return pb.DetectRequest(encoded=encode_jpeg(image, 90))
    h, w = image.shape[:2]
    return pb.DetectRequest(raw=pb.RawImage(data=image.tobytes(), width=w, height=h))


async def worker_batch1(stub: Any, req: Any, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await stub.Detect(req, timeout=30)
        times.append(time.perf_counter() - start)
    return times


async def worker_saturated(stub: Any, req: Any, seconds: float, callers: int) -> tuple[int, float]:
    answered = 0
    end = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal answered
        while time.monotonic() < end:
            await stub.Detect(req, timeout=30)
            answered += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return answered, time.perf_counter() - started


async def measure(address: str, model: Any, image: np.ndarray, kind: str, args: argparse.Namespace) -> dict[str, float]:
    """Bare and worker in turns (`--rounds` of each), so that a slow spell of a shared machine falls on
    both alike; percentiles over every sample, throughput over every round."""
    import grpc

    from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc

    pixels, req = model_input(model, image), request(image, kind)
    bare_t: list[float] = []
    worker_t: list[float] = []
    bare_n = worker_n = 0
    bare_s = worker_s = 0.0
    per_round = max(1, args.runs // args.rounds)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectorStub(channel)
        for _ in range(10):
            await stub.Detect(req, timeout=30)
            model.infer(pixels[None])
        for _ in range(args.rounds):
            bare_t += bare_batch1(model, pixels, per_round)
            worker_t += await worker_batch1(stub, req, per_round)
            n, s = bare_saturated(model, pixels, args.seconds / args.rounds)
            bare_n, bare_s = bare_n + n, bare_s + s
            n, s = await worker_saturated(stub, req, args.seconds / args.rounds, args.callers)
            worker_n, worker_s = worker_n + n, worker_s + s
    return {"bare_p50_ms": 1000 * statistics.median(bare_t), "bare_p99_ms": 1000 * _percentile(bare_t, 99),
            "worker_p50_ms": 1000 * statistics.median(worker_t), "worker_p99_ms": 1000 * _percentile(worker_t, 99),
            "bare_batch8_images_s": bare_n / bare_s, "saturated_images_s": worker_n / worker_s}


def start_worker(backend: str, threads: int, extra: list[str]) -> Proc:
    proc = Proc("eagleeye-detector", ["--listen", "127.0.0.1:0", "--backend", backend, "--torch-threads",
                                      str(threads), *extra])
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
    p.add_argument("--runs", type=int, default=300, help="batch-1 calls timed per row, each side (default 300)")
    p.add_argument("--seconds", type=float, default=9.0, help="saturated seconds per row, each side (default 9)")
    p.add_argument("--rounds", type=int, default=3, help="turns of bare and worker per row (default 3)")
    p.add_argument("--callers", type=int, default=16, help="concurrent callers when saturated (default 16)")
    p.add_argument("--backends", default="torch,onnxruntime,null",
                   help="torch, onnxruntime, null: torch with a model that does almost nothing (default: all)")
    p.add_argument("--inputs", default="raw,jpeg")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads, model and worker (default 1)")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                   help="an extra eagleeye-detector argument (repeat), e.g. --worker-arg=--max-queue-delay-ms=3")
    p.add_argument("--out", type=Path, help="write worker.json and worker.md into this folder")
    args = p.parse_args()
    image = frame()
    rows: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    for backend in args.backends.split(","):
        model_file = null_model(scratch) if backend == NULL else None
        model = load(backend, args.threads, model_file)
        proc = start_worker("torch" if backend == NULL else backend, args.threads,
                            [*args.worker_arg, *(["--model", str(model_file)] if model_file else [])])
        try:
            for kind in args.inputs.split(","):
                print(f"{backend}, {kind}: {args.rounds} rounds of {args.runs // args.rounds} calls at batch 1 and "
                      f"{args.seconds / args.rounds:g} s saturated, bare and worker in turns", file=sys.stderr,
                      flush=True)
                got = asyncio.run(measure(proc.address, model, image, kind, args))
                row = {"backend": backend, "input": kind, **{k: round(v, 2) for k, v in got.items()},
                       "added_p50_ms": round(got["worker_p50_ms"] - got["bare_p50_ms"], 2),
                       "saturated_share": round(got["saturated_images_s"] / got["bare_batch8_images_s"], 3)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.stop()
            del model
    shutil.rmtree(scratch, ignore_errors=True)
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
