"""Per-image inference latency of the embedded model on each backend (torch, ONNX Runtime), at batch 1 and 8.

    python -m bench.backends [--runs 30] [--threads N]

The model alone, in this process, on the CPU here (CUDA and TensorRT where a GPU is lent): medians of
`--runs` timed batches after warm-up; per image = batch time / batch size. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np


def measure(model: Any, batch: int, runs: int) -> dict[str, float]:
    x = np.random.default_rng(batch).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    for _ in range(3):
        model.infer(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.infer(x)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"batch_ms": round(median * 1000, 2), "per_image_ms": round(median * 1000 / batch, 2)}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for both backends (default 1)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import torch

    from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH
    from eagleeye.detector.model import load_model
    from eagleeye.detector.onnxmodel import OnnxDetector

    torch.set_num_threads(args.threads)
    models = {"torch": load_model(DEFAULT_MODEL_PATH, args.device),
              "onnxruntime": OnnxDetector(DEFAULT_ONNX_PATH, args.device, threads=args.threads)}
    rows = {name: {b: measure(m, b, args.runs) for b in (1, 8)} for name, m in models.items()}
    print(f"per-image latency, embedded model 256x256, device {args.device}, {args.threads} thread(s), "
          f"medians of {args.runs} batches")
    print(f"{'backend':<14}{'batch 1 ms/img':>16}{'batch 8 ms/img':>16}{'batch 8 ms':>12}")
    for name, r in rows.items():
        print(f"{name:<14}{r[1]['per_image_ms']:>16.2f}{r[8]['per_image_ms']:>16.2f}{r[8]['batch_ms']:>12.2f}")
    t, o = rows["torch"], rows["onnxruntime"]
    print(f"onnxruntime / torch per image: batch 1 {o[1]['per_image_ms'] / t[1]['per_image_ms']:.2f}x, "
          f"batch 8 {o[8]['per_image_ms'] / t[8]['per_image_ms']:.2f}x")
    print(json.dumps({"backends": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
