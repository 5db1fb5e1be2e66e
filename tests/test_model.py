"""Loading model files: torch.export and TorchScript, metadata inside, clear errors otherwise."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from eagleeye.detector.contract import ModelError
from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH
from eagleeye.detector.model import export_model, load_model


class Tiny(torch.nn.Module):
    """Follows the contract: one box per image whose score is the image's mean brightness."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        score = x.mean(dim=(1, 2, 3)).reshape(n, 1)
        boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(n, 1, 4)
        return boxes, score, torch.zeros(n, 1, dtype=torch.int64)


def test_export_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt2"
    export_model(Tiny(), path, name="tiny", version="3", classes=("thing",), input_size=(8, 8))
    model = load_model(path, "cpu")
    assert (model.meta.name, model.meta.version, model.meta.classes, model.meta.input_size) == \
        ("tiny", "3", ("thing",), (8, 8))
    batch = np.full((3, 8, 8, 3), 255, np.uint8)
    out = model.infer(batch)
    assert len(out) == 3 and out[0].scores[0] == pytest.approx(1.0) and out[0].boxes[0].tolist() == [1, 2, 3, 4]


def test_torchscript_with_metadata(tmp_path: Path) -> None:
    path = tmp_path / "tiny.ts"
    meta = {"name": "ts", "version": "1", "classes": ["a", "b"], "input_size": [8, 8]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Tiny()), str(path), _extra_files={"eagleeye.json": json.dumps(meta)})
    model = load_model(path, "cpu")
    assert model.meta.classes == ("a", "b")
    assert model.infer(np.zeros((2, 8, 8, 3), np.uint8))[1].scores[0] == 0


def test_missing_metadata_and_garbage_are_model_errors(tmp_path: Path) -> None:
    path = tmp_path / "nometa.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Tiny()), str(path))
    with pytest.raises(ModelError, match=r"eagleeye\.json is missing or malformed"):
        load_model(path, "cpu")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a loadable"):
        load_model(junk, "cpu")


def test_the_embedded_model_follows_the_contract() -> None:
    model = load_model(DEFAULT_MODEL_PATH, "cpu")
    assert model.meta.classes == ("screen", "ellipse", "triangle") and model.meta.input_size == (256, 256)
    [out] = model.infer(np.zeros((1, 256, 256, 3), np.uint8))
    assert out.boxes.shape == (100, 4) and np.isfinite(out.scores).all()


class Counting(Tiny):
    """Writes its own buffer in forward (a running count): two batches at once would race on it."""

    seen: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.seen.add_(x.shape[0])
        return super().forward(x)


class Viewing(torch.nn.Module):
    """Reshapes its input with view, which needs the contiguous N x 3 x H x W tensor the contract names."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        score = x.view(n, -1).mean(dim=1).reshape(n, 1)
        boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(n, 1, 4)
        return boxes, score, torch.zeros(n, 1, dtype=torch.int64)


def test_a_program_that_writes_its_own_buffers_is_marked_not_concurrent(tmp_path: Path) -> None:
    for module, concurrent in ((Tiny(), True), (Counting(), False)):
        path = tmp_path / f"{type(module).__name__}.pt2"
        export_model(module, path, name="m", version="1", classes=("thing",), input_size=(8, 8))
        model = load_model(path, "cpu")
        assert model.concurrent is concurrent
        assert model.infer(np.full((2, 8, 8, 3), 255, np.uint8))[1].scores[0] == pytest.approx(1.0)


def test_the_model_gets_a_contiguous_input_it_may_view(tmp_path: Path) -> None:
    path = tmp_path / "viewing.pt2"
    export_model(Viewing(), path, name="v", version="1", classes=("thing",), input_size=(8, 8))
    batch = np.zeros((2, 8, 8, 3), np.uint8)
    batch[1] = 51  # 0.2 of full scale
    out = load_model(path, "cpu").infer(batch)
    assert [float(o.scores[0]) for o in out] == pytest.approx([0.0, 0.2])


def test_a_model_not_safe_for_concurrent_batches_gets_one_thread_whatever_the_setting() -> None:
    from eagleeye.detector.__main__ import inference_threads
    from eagleeye.detector.config import DetectorConfig

    class Model:
        concurrent = True

    cfg = DetectorConfig(inference_threads=3)
    assert inference_threads(cfg, "cpu", Model()) == 3  # type: ignore[arg-type]
    Model.concurrent = False
    assert inference_threads(cfg, "cpu", Model()) == 1  # type: ignore[arg-type]
    assert inference_threads(DetectorConfig(), "cuda:0", Model()) == 1  # type: ignore[arg-type]
    Model.concurrent = True
    assert inference_threads(DetectorConfig(), "cuda:0", Model()) == 2  # type: ignore[arg-type]
    assert inference_threads(DetectorConfig(), "cpu", Model()) == 1  # type: ignore[arg-type]


def test_a_compiled_model_answers_as_the_eager_one_for_every_batch_size_without_compiling_again(
        tmp_path: Path) -> None:
    from eagleeye.detector.model import batch_buckets

    assert batch_buckets(1) == (1,) and batch_buckets(4) == (1, 2, 4) and batch_buckets(12) == (1, 2, 4, 8, 12)
    path = tmp_path / "viewing.pt2"
    export_model(Viewing(), path, name="v", version="1", classes=("thing",), input_size=(8, 8))
    eager, model = load_model(path, "cpu"), load_model(path, "cpu")
    compiled: list[int] = []
    try:
        torch.compiler.set_stance("eager_on_recompile")  # as another model's compile leaves it
        model.compile(4, lambda size, seconds: compiled.append(size))
        assert compiled == [1, 2, 4] and model.buckets == (1, 2, 4)
        assert not model.concurrent and "torch.compile" in model.serial_reason
        # Every size the batcher forms runs a graph compiled above (3 padded to 4); none compiles now.
        torch.compiler.set_stance("fail_on_recompile")
        rng = np.random.default_rng(0)
        for n in (1, 2, 3, 4):
            batch = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
            got, want = model.infer(batch), eager.infer(batch)
            assert len(got) == n
            assert [float(o.scores[0]) for o in got] == pytest.approx([float(o.scores[0]) for o in want], abs=1e-6)
    finally:
        torch.compiler.set_stance("default")


def test_a_model_torch_compile_cannot_compile_is_a_model_error_that_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tiny.pt2"
    export_model(Tiny(), path, name="tiny", version="1", classes=("thing",), input_size=(8, 8))
    model = load_model(path, "cpu")

    def cannot(module: object, **_: object) -> object:
        def run(x: torch.Tensor) -> None:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n\nSet TORCHDYNAMO_VERBOSE=1 ...")
        return run

    monkeypatch.setattr(torch, "compile", cannot)
    with pytest.raises(ModelError) as err:
        model.compile(2)
    assert str(err.value) == ("compile: torch.compile failed on batch size 1 (RuntimeError: InvalidCxxCompiler: "
                              "No working C++ compiler found); run without --compile")
