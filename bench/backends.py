"""Per-image inference latency of the embedded model on each backend (torch, ONNX Runtime), at batch 1 and 8.

    python -m bench.backends [--runs 30] [--threads N] [--device cuda:0] [--compile]

The model alone, in this process, on the CPU here (CUDA and TensorRT where a GPU is lent): medians of
`--runs` timed batches after warm-up; per image = batch time / batch size. With `--rounds` > 1 the
backends take turns and each figure is the median of the rounds' medians, so a slow spell of a shared
machine falls on all of them. `--compile` adds the torch model through `torch.compile` (inductor, one
static graph per batch size, compiled before timing; the compile time is printed): the figure that
says whether compiling pays on this device. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

BATCHES = (1, 8)


def _row(median_s: float, batch: int) -> dict[str, float]:
    return {"batch_ms": round(median_s * 1000, 2), "per_image_ms": round(median_s * 1000 / batch, 2)}


def measure(model: Any, batch: int, runs: int) -> float:
    """The median seconds of `runs` batches of `batch` images, after a warm-up."""
    x = np.random.default_rng(batch).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    for _ in range(3):
        model.infer(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.infer(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for both backends (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=1, help="backends take turns this many times (default 1)")
    p.add_argument("--compile", action="store_true", help="add torch.compile's graph of the torch model")
    args = p.parse_args()
    import torch

    from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH
    from eagleeye.detector.model import load_model
    from eagleeye.detector.onnxmodel import OnnxDetector

    torch.set_num_threads(args.threads)
    models = {"torch": load_model(DEFAULT_MODEL_PATH, args.device),
              "onnxruntime": OnnxDetector(DEFAULT_ONNX_PATH, args.device, threads=args.threads)}
    if args.compile:  # as the worker's --compile does it, for a max_batch of 8
        started = time.perf_counter()
        models["torch.compile"] = compiled = load_model(DEFAULT_MODEL_PATH, args.device)
        compiled.compile(max(BATCHES))
        print(f"torch.compile: {time.perf_counter() - started:.1f} s to load and compile batch sizes "
              f"{', '.join(map(str, compiled.buckets))}")
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            for b in BATCHES:
                times[name][b].append(measure(m, b, args.runs))
    rows = {name: {b: _row(statistics.median(ts), b) for b, ts in by_batch.items()} for name, by_batch in times.items()}
    print(f"per-image latency, embedded model 256x256, device {args.device}, {args.threads} thread(s), "
          f"medians of {args.runs} batches" + (f", median of {args.rounds} rounds" if args.rounds > 1 else ""))
    print(f"{'backend':<14}{'batch 1 ms/img':>16}{'batch 8 ms/img':>16}{'batch 8 ms':>12}")
    for name, r in rows.items():
        print(f"{name:<14}{r[1]['per_image_ms']:>16.2f}{r[8]['per_image_ms']:>16.2f}{r[8]['batch_ms']:>12.2f}")
    t = rows["torch"]
    for name in models:
        if name != "torch":
            r = rows[name]
            print(f"{name} / torch per image: batch 1 {r[1]['per_image_ms'] / t[1]['per_image_ms']:.2f}x, "
                  f"batch 8 {r[8]['per_image_ms'] / t[8]['per_image_ms']:.2f}x")
    print(json.dumps({"backends": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
