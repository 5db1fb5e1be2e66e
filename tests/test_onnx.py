"""The ONNX Runtime backend: the embedded model's ONNX export answers as torch does, metadata inside, clear
errors; a worker on it serves, names its backend, and reaches the same mAP bar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from eagleeye.detector.contract import META_FILE, ModelError
from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH
from eagleeye.detector.model import load_model
from eagleeye.detector.onnxmodel import OnnxDetector, providers
from eagleeye.harness.processes import Proc
from tests.conftest import fast_config
from tests.procs import start_detector


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)


@pytest.mark.parametrize("n", [1, 8])
def test_the_shipped_onnx_model_answers_as_the_torch_one(n: int) -> None:
    ort_model, torch_model = OnnxDetector(DEFAULT_ONNX_PATH, "cpu"), load_model(DEFAULT_MODEL_PATH, "cpu")
    assert ort_model.meta == torch_model.meta and ort_model.backend == "onnxruntime (CPUExecutionProvider)"
    x = batch(n)
    for a, b in zip(ort_model.infer(x), torch_model.infer(x), strict=True):
        assert np.abs(a.boxes - b.boxes).max() < 0.05 and np.abs(a.scores - b.scores).max() < 1e-4
        assert np.array_equal(a.classes, b.classes)


def test_the_export_command_writes_a_checked_model_with_its_metadata(tmp_path: Path) -> None:
    from eagleeye.detector.export import main

    out = tmp_path / "m.onnx"
    assert main(["--out", str(out)]) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props[META_FILE])["classes"] == ["screen", "ellipse", "triangle"]
    assert OnnxDetector(out, "cpu").meta.input_size == (256, 256)


def test_bad_files_and_missing_providers_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        OnnxDetector(junk, "cpu")
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(DEFAULT_ONNX_PATH))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(ModelError, match=f"no {META_FILE}"):
        OnnxDetector(bare, "cpu")
    with pytest.raises(ModelError, match="has no CUDAExecutionProvider"):
        OnnxDetector(DEFAULT_ONNX_PATH, "cuda:0")
    assert providers("cuda:1", tensorrt=True)[0][0] == "TensorrtExecutionProvider"


@pytest.fixture(scope="module")
def onnx_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_detector("--backend", "onnxruntime", "--worker-id", "ort",
                          "--config", fast_config(tmp_path_factory.mktemp("ort")))
    yield proc
    proc.stop()


def test_a_worker_on_onnx_runtime_serves_names_its_backend_and_reaches_the_bar(onnx_worker: Proc) -> None:
    from tests.test_detector_process import run_cli

    ready = onnx_worker.wait_for_event("model ready", timeout=120)
    assert ready["backend"] == "onnxruntime (CPUExecutionProvider)"
    out = run_cli("eval", "--target", onnx_worker.address, "--images", "200", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    print(f"\nONNX Runtime backend: mAP@0.5 {result['map50']:.3f} on 200 held-out scenes")
    assert result["map50"] >= 0.9, result


def test_model_info_names_the_backend(onnx_worker: Proc) -> None:
    import grpc

    from eagleeye.api.detector.v1 import detector_pb2 as pb
    from eagleeye.api.detector.v1 import detector_pb2_grpc as pb_grpc

    onnx_worker.wait_for_event("model ready", timeout=120)
    with grpc.insecure_channel(onnx_worker.address) as ch:
        info = pb_grpc.DetectorStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.backend == "onnxruntime (CPUExecutionProvider)" and info.classes == ["screen", "ellipse", "triangle"]
