"""Loading detection models from files, and the contract they follow.

A model file is a torch.export program (`.pt2`) or a TorchScript module (`.pt`/`.ts`), carrying an
extra file `eagleeye.json` with {"name", "version", "classes": [...], "input_size": [H, W]}.

Contract (docs/model-contract.md): input float32 RGB in [0, 1], shape N x 3 x H x W with N dynamic;
outputs (boxes N x K x 4 as x0 y0 x1 y1 in input pixels, scores N x K in [0, 1], classes N x K int).
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eagleeye.detector.contract import META_FILE, ModelError, ModelMeta, RawDetections, parse_meta

#: The largest batch an exported program must accept (its dynamic batch dimension's bound).
MAX_EXPORT_BATCH = 64


class TorchDetector:
    """A loaded model file on a device, following the contract.

    On CUDA, `infer` may run on several threads at once (the batcher's `threads`): each thread gets its
    own CUDA stream, so one batch's upload and read-back overlap another's forward pass. Batches come
    from `input_buffer`'s pinned host memory, so the upload is a DMA that does not stage through a
    pageable copy; the three outputs come back into pinned memory with one wait for the stream.
    """

    def __init__(self, module: Any, meta: ModelMeta, device: str, half: bool, concurrent: bool = True) -> None:
        self.module = module
        self.meta = meta
        self.device = device
        self.half = half
        self._dtype = torch.float16 if half else torch.float32
        self.backend = "torch"
        self._cuda = device.startswith("cuda")
        self._streams = threading.local()
        # False for a program that writes its own buffers in forward: two batches at once would race.
        self.concurrent = concurrent
        self.serial_reason = "" if concurrent else "model writes its own buffers in forward"
        # With `compile`: the batch sizes compiled; a batch runs padded to the smallest that holds it.
        self.buckets: tuple[int, ...] = ()

    def compile(self, max_batch: int, progress: Callable[[int, float], None] | None = None) -> None:
        """Compile the model with torch.compile (inductor): one static graph per batch size of
        `batch_buckets(max_batch)` (at most 7, under dynamo's default limit of 8 graphs per function),
        each compiled here by a warm-up batch (`progress(size, seconds)` after each), then each run once
        more with recompiling forbidden, to prove that serving will find it. Batches then run padded to
        the next compiled size. From then on, any call no graph's guards accept (a shape, a grad mode, a
        dtype never seen) runs uncompiled, silently, instead of compiling for seconds on the serving
        path: torch's "eager_on_recompile" stance, which is process-wide.

        One batch at a time from then on: torch.compile'd code is not thread-safe (pytorch#118260,
        pytorch#143931)."""
        # The stance is process-wide: after an earlier compile it would keep this one from compiling.
        torch.compiler.set_stance("default")
        self.module = torch.compile(self.module, dynamic=False)
        self.buckets = batch_buckets(max_batch)
        h, w = self.meta.input_size
        for size in self.buckets:
            start = time.monotonic()
            try:
                self.infer(np.zeros((size, h, w, 3), np.uint8))
            except Exception as e:  # no C++ compiler, an op inductor cannot lower: the same at every start
                first = (str(e).strip().splitlines() or [""])[0]
                raise ModelError(f"compile: torch.compile failed on batch size {size} ({type(e).__name__}: "
                                 f"{first}); run without --compile") from None
            if progress is not None:
                progress(size, time.monotonic() - start)
        torch.compiler.set_stance("fail_on_recompile")
        try:
            for n in range(1, max_batch + 1):  # every size the batcher forms, padded as served
                self.infer(np.zeros((n, h, w, 3), np.uint8))
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise ModelError(f"compile: a batch of {n} does not run the graph compiled for it ({first}); "
                             "run without --compile") from None
        finally:
            torch.compiler.set_stance("eager_on_recompile")
        if self.concurrent:
            self.serial_reason = "torch.compile's graphs run one batch at a time"
        self.concurrent = False

    def input_buffer(self, max_batch: int) -> np.ndarray:
        """Host memory for one thread's batches (max_batch x H x W x 3 uint8), pinned on CUDA."""
        h, w = self.meta.input_size
        if not self._cuda:
            return np.empty((max_batch, h, w, 3), np.uint8)
        return torch.empty((max_batch, h, w, 3), dtype=torch.uint8, pin_memory=True).numpy()

    def infer(self, batch: np.ndarray) -> list[RawDetections]:
        if self._cuda:
            return self._infer_cuda(batch)
        with torch.inference_mode():  # the input made here too, as on CUDA: a compiled graph's guards see both
            x = _to_input(torch.from_numpy(batch), self._dtype, self._rows(len(batch)))
            boxes, scores, classes = self.module(x)
        return _split(boxes.float().numpy(), scores.float().numpy(), classes.numpy(), len(batch))

    def _rows(self, n: int) -> int:
        """The batch size the model runs for n images: n, or the compiled size that holds it."""
        return next((b for b in self.buckets if b >= n), n)

    def _stream(self) -> Any:
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        return stream

    def _infer_cuda(self, batch: np.ndarray) -> list[RawDetections]:
        stream = self._stream()
        try:
            with torch.cuda.stream(stream), torch.inference_mode():
                x = _to_input(torch.from_numpy(batch).to(self.device, non_blocking=True), self._dtype,
                              self._rows(len(batch)))
                boxes, scores, classes = self.module(x)
                # non_blocking to the host lands in pinned memory; one wait for all three.
                out = [t.to("cpu", non_blocking=True) for t in (boxes.float(), scores.float(), classes)]
        finally:
            # Also when the model raised: the upload may still read `batch`, which the caller reuses.
            try:
                stream.synchronize()
            except Exception:  # a broken context: the model's own error is the one to report
                pass
        return _split(out[0].numpy(), out[1].numpy(), out[2].numpy(), len(batch))


def _to_input(pixels: torch.Tensor, dtype: torch.dtype, rows: int) -> torch.Tensor:
    """N x H x W x 3 uint8 to the contract's N x 3 x H x W in [0, 1], contiguous (a model may view it);
    padded with black images to `rows` (a compiled batch size)."""
    n, h, w, _ = pixels.shape
    if rows == n:
        return pixels.permute(0, 3, 1, 2).to(dtype, memory_format=torch.contiguous_format).div_(255.0)
    x = torch.zeros((rows, 3, h, w), dtype=dtype, device=pixels.device)
    x[:n].copy_(pixels.permute(0, 3, 1, 2)).div_(255.0)
    return x


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes compiled for a batcher of `max_batch`: powers of two below it, and itself."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    return (*sizes, max_batch) if max_batch > 1 else (1,)


def _split(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, n: int) -> list[RawDetections]:
    classes = classes.astype(np.int64, copy=False)
    return [RawDetections(boxes[i], scores[i], classes[i]) for i in range(n)]


def load_model(path: Path, device: str, half: bool = False) -> TorchDetector:
    """Load a .pt2 (torch.export) or TorchScript file onto `device`."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    extra: dict[str, Any] = {META_FILE: ""}
    try:
        if path.suffix == ".pt2":
            program = torch.export.load(str(path), extra_files=extra)
            mutates = _writes_state(program)
            if device != "cpu":
                from torch.export.passes import move_to_device_pass

                # Constants and device arguments recorded in the graph move too, not only the weights.
                program = move_to_device_pass(program, device)
            module: Any = program.module()
            module.to(device)
        else:
            mutates = False  # TorchScript does not say; its forward is taken to be read-only
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
                module = torch.jit.load(  # type: ignore[no-untyped-call]
                    str(path), map_location=device, _extra_files=extra)
                module.eval()
    except ModelError:
        raise
    except Exception as e:  # torch raises many types for a bad file; all mean "not a model"
        raise ModelError(f"{path}: not a loadable torch.export (.pt2) or TorchScript file: {e}") from None
    raw_meta: Any = extra[META_FILE]
    meta = parse_meta(raw_meta.decode() if isinstance(raw_meta, bytes) else str(raw_meta), path)
    if half:
        module = module.half()
    if device.startswith("cuda"):
        # The weights' copies and casts were queued on the default stream; inference runs on others.
        torch.cuda.synchronize(device)
    return TorchDetector(module, meta, device, half, concurrent=not mutates)


def _writes_state(program: Any) -> bool:
    """Whether an exported program writes its own buffers or parameters in forward (an in-place op on
    one, functionalised or not): two batches running it at once would race on that state."""
    signature = program.graph_signature
    if signature.buffers_to_mutate:
        return True
    state = set(signature.inputs_to_buffers) | set(signature.inputs_to_parameters)
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for i, arg in enumerate(schema.arguments):
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if arg.alias_info is not None and arg.alias_info.is_write and getattr(value, "name", None) in state:
                return True
    return False


def export_model(model: torch.nn.Module, out: Path, *, name: str, version: str,
                 classes: tuple[str, ...], input_size: tuple[int, int]) -> None:
    """Export a module following the contract to a .pt2 file with its metadata inside."""
    h, w = input_size
    example = torch.rand(2, 3, h, w)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    meta = json.dumps({"name": name, "version": version, "classes": list(classes),
                       "input_size": [h, w]})
    torch.export.save(program, str(out), extra_files={META_FILE: meta})
