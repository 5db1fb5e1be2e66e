"""The worker's own cost: the bare model against a worker process, at batch 1 and saturated.

    python -m bench.worker [--runs 300] [--seconds 9] [--rounds 3] [--callers 16]
                           [--backends torch,onnxruntime,null] [--inputs raw,jpeg] [--threads 1]
                           [--device cpu|cuda:N] [--half] [--worker-arg ARG ...] [--out bench/out]

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

With `--device cuda:N` both run on that GPU (`--half`: fp16, torch only), and the table adds the GPU's
utilisation as NVML reports it (nvidia-ml-py), averaged over samples every 0.2 s while each side is
saturated: the worker's against the bare batch-8 loop's, the issue's ">= 90 % busy under load".

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
import threading
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


def load(backend: str, threads: int, device: str, half: bool, path: Path | None = None) -> Any:
    import torch

    from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH
    from eagleeye.detector.model import load_model

    torch.set_num_threads(threads)
    if backend == "onnxruntime":
        from eagleeye.detector.onnxmodel import OnnxDetector

        return OnnxDetector(DEFAULT_ONNX_PATH, device, False, threads=threads)
    return load_model(path or DEFAULT_MODEL_PATH, device, half=half)


class GpuBusy:
    """The GPU's utilisation (NVML) sampled every 0.2 s on a thread between start() and stop()."""

    def __init__(self, device: str) -> None:
        from eagleeye.detector.gpu import open_source

        self._source = open_source(device, None)
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def description(self) -> str:
        return str(self._source.description)

    def start(self) -> None:
        self._samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            reading = self._source.sample()
            if reading is not None and not reading.gpu_lost:
                self._samples.append(reading.utilization_percent)

    def stop(self) -> list[float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self._samples

    def close(self) -> None:
        self._source.close()


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


async def measure(address: str, model: Any, image: np.ndarray, kind: str, args: argparse.Namespace,
                  gpu: GpuBusy | None) -> dict[str, float]:
    """Bare and worker in turns (`--rounds` of each), so that a slow spell of a shared machine falls on
    both alike; percentiles over every sample, throughput over every round."""
    import grpc

    from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc

    pixels, req = model_input(model, image), request(image, kind)
    bare_t: list[float] = []
    worker_t: list[float] = []
    bare_n = worker_n = 0
    bare_s = worker_s = 0.0
    bare_util: list[float] = []
    worker_util: list[float] = []
    per_round = max(1, args.runs // args.rounds)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectorStub(channel)
        for _ in range(10):
            await stub.Detect(req, timeout=30)
            model.infer(pixels[None])
        for _ in range(args.rounds):
            bare_t += bare_batch1(model, pixels, per_round)
            worker_t += await worker_batch1(stub, req, per_round)
            if gpu is not None:
                gpu.start()
            n, s = bare_saturated(model, pixels, args.seconds / args.rounds)
            bare_n, bare_s = bare_n + n, bare_s + s
            if gpu is not None:
                bare_util += gpu.stop()
                gpu.start()
            n, s = await worker_saturated(stub, req, args.seconds / args.rounds, args.callers)
            worker_n, worker_s = worker_n + n, worker_s + s
            if gpu is not None:
                worker_util += gpu.stop()
    got = {"bare_p50_ms": 1000 * statistics.median(bare_t), "bare_p99_ms": 1000 * _percentile(bare_t, 99),
           "worker_p50_ms": 1000 * statistics.median(worker_t), "worker_p99_ms": 1000 * _percentile(worker_t, 99),
           "bare_batch8_images_s": bare_n / bare_s, "saturated_images_s": worker_n / worker_s}
    if bare_util and worker_util:
        got |= {"bare_gpu_util_pct": statistics.mean(bare_util), "worker_gpu_util_pct": statistics.mean(worker_util)}
    return got


def start_worker(backend: str, threads: int, device: str, extra: list[str]) -> Proc:
    proc = Proc("eagleeye-detector", ["--listen", "127.0.0.1:0", "--backend", backend, "--torch-threads",
                                      str(threads), "--device", device, *extra])
    try:
        proc.wait_listening()
        proc.wait_for_event("model ready", 600 if "--compile" in extra else 120)
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
    p.add_argument("--device", default="cpu", metavar="cpu|cuda:N",
                   help="where the bare model and the worker run (default cpu); on CUDA the table adds NVML's "
                        "GPU utilisation while saturated")
    p.add_argument("--half", action="store_true", help="fp16 on CUDA, bare and worker (torch and null only)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile, bare and worker (torch and null only): one graph per batch size 1, 2, 4, 8")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                   help="an extra eagleeye-detector argument (repeat), e.g. --worker-arg=--max-queue-delay-ms=3")
    p.add_argument("--out", type=Path, help="write worker.json and worker.md into this folder")
    args = p.parse_args()
    if args.device != "cpu" and not (args.device.startswith("cuda:") and args.device[5:].isdigit()):
        p.error(f"--device {args.device!r}: cpu or cuda:N")
    if args.half and args.device == "cpu":
        p.error("--half runs fp16 on CUDA only; add --device cuda:N")
    cuda = args.device != "cpu"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: torch sees no CUDA device here")
    image = frame()
    rows: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    for backend in args.backends.split(","):
        model_file = null_model(scratch) if backend == NULL else None
        half = args.half and backend != "onnxruntime"
        model = load(backend, args.threads, args.device, half, model_file)
        compiled = args.compile and backend != "onnxruntime"
        if compiled:
            model.compile(8)  # the worker's default max_batch
        proc = start_worker("torch" if backend == NULL else backend, args.threads, args.device,
                            [*args.worker_arg, *(["--half"] if half else []), *(["--compile"] if compiled else []),
                             *(["--model", str(model_file)] if model_file else [])])
        gpu = GpuBusy(args.device) if cuda else None
        try:
            for kind in args.inputs.split(","):
                print(f"{backend}, {kind}: {args.rounds} rounds of {args.runs // args.rounds} calls at batch 1 and "
                      f"{args.seconds / args.rounds:g} s saturated, bare and worker in turns", file=sys.stderr,
                      flush=True)
                got = asyncio.run(measure(proc.address, model, image, kind, args, gpu))
                row = {"backend": backend, "input": kind, **{k: round(v, 2) for k, v in got.items()},
                       "added_p50_ms": round(got["worker_p50_ms"] - got["bare_p50_ms"], 2),
                       "saturated_share": round(got["saturated_images_s"] / got["bare_batch8_images_s"], 3)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.stop()
            if gpu is not None:
                gpu.close()
            del model
    shutil.rmtree(scratch, ignore_errors=True)
    command = "python -m bench.worker " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} " \
              f"{platform.python_version()}, {args.threads} intra-op thread(s), " + \
              (f"{_gpu_name(args.device)}{' fp16' if args.half else ''}" if cuda else "CPU inference") + \
              (", torch.compile" if args.compile else "")
    util = any("worker_gpu_util_pct" in r for r in rows)
    lines = [f"`{command.strip()}` on {machine}", "",
             "| backend | input | bare p50 / p99 ms | worker p50 / p99 ms | added p50 ms | bare batch-8 img/s "
             f"| worker, {args.callers} callers img/s | share |" + (" GPU busy, bare / worker |" if util else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if util else "")]
    lines += [f"| {r['backend']} | {r['input']} | {r['bare_p50_ms']} / {r['bare_p99_ms']} | {r['worker_p50_ms']} / "
              f"{r['worker_p99_ms']} | {r['added_p50_ms']} | {r['bare_batch8_images_s']} | "
              f"{r['saturated_images_s']} | {100 * r['saturated_share']:.0f} % |"
              + (f" {r.get('bare_gpu_util_pct', '-')} / {r.get('worker_gpu_util_pct', '-')} % |" if util else "")
              for r in rows]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "worker.json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows},
                                                         indent=2) + "\n")
        (args.out / "worker.md").write_text("\n".join(lines) + "\n")
    return 0


def _gpu_name(device: str) -> str:
    import torch

    return f"{torch.cuda.get_device_name(int(device.partition(':')[2]))} ({device})"


if __name__ == "__main__":
    sys.exit(main())
