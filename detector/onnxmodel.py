"""The ONNX Runtime backend: a `.onnx` file following the model contract (docs/model-contract.md).

The contract is the torch one: input `images` float32 RGB in [0, 1], N x 3 x H x W with N dynamic;
outputs boxes N x K x 4, scores N x K, classes N x K. The metadata (name, version, classes, input
size) is the same JSON as a .pt2 file's `eagleeye.json`, stored in the ONNX file's metadata_props
under that key. Execution providers follow --device: the CPU provider for `cpu`; CUDA for `cuda:N`
(TensorRT first with --ort-trt), each falling back to the CPU provider only when asked for the CPU.
No torch import: the batcher, canary and health see the same Detector as with torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eagleeye.detector.contract import META_FILE, ModelError, ModelMeta, RawDetections, parse_meta


def providers(device: str, tensorrt: bool) -> list[Any]:
    """ONNX Runtime execution providers for `device` (cpu, cuda:N), most preferred first."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    index = int(device.partition(":")[2] or 0)
    chosen: list[Any] = [("CUDAExecutionProvider", {"device_id": index})]
    if tensorrt:
        chosen.insert(0, ("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": True}))
    return chosen


class OnnxDetector:
    """A .onnx model in an ONNX Runtime session (thread-safe `run`, as the batcher needs)."""

    def __init__(self, path: Path, device: str, tensorrt: bool = False, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("the ONNX Runtime backend needs onnxruntime: pip install 'eagleeye[onnx]' "
                             "(onnxruntime-gpu for CUDA and TensorRT)") from None
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        wanted = providers(device, tensorrt)
        available = set(ort.get_available_providers())
        missing = [p[0] if isinstance(p, tuple) else p for p in wanted
                   if (p[0] if isinstance(p, tuple) else p) not in available]
        if missing:
            raise ModelError(f"device={device!r}: ONNX Runtime here has no {', '.join(missing)} "
                             f"(it has {', '.join(sorted(available))}); install onnxruntime-gpu for CUDA")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise ModelError(f"{path}: not a loadable ONNX model: {e}") from None
        meta_text = self._session.get_modelmeta().custom_metadata_map.get(META_FILE)
        if meta_text is None:
            raise ModelError(f"{path}: no {META_FILE} in the ONNX metadata_props; see docs/model-contract.md")
        self.meta: ModelMeta = parse_meta(meta_text, path)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(self._session.get_outputs()) != 3:
            raise ModelError(f"{path}: the contract needs one input and three outputs (boxes, scores, classes)")
        self._input = inputs[0].name
        self.device = device
        self.backend = f"onnxruntime ({self._session.get_providers()[0]})"

    def infer(self, batch: np.ndarray) -> list[RawDetections]:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        x /= 255.0
        boxes, scores, classes = self._session.run(None, {self._input: x})
        return [RawDetections(np.asarray(boxes[i], np.float32), np.asarray(scores[i], np.float32),
                              np.asarray(classes[i]).astype(np.int64)) for i in range(len(batch))]
