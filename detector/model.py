"""Loading detection models from files, and the contract they follow.

A model file is a torch.export program (`.pt2`) or a TorchScript module (`.pt`/`.ts`), carrying an
extra file `eagleeye.json` with {"name", "version", "classes": [...], "input_size": [H, W]}.

Contract (docs/model-contract.md): input float32 RGB in [0, 1], shape N x 3 x H x W with N dynamic;
outputs (boxes N x K x 4 as x0 y0 x1 y1 in input pixels, scores N x K in [0, 1], classes N x K int).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eagleeye.detector.contract import META_FILE, ModelError, ModelMeta, RawDetections, parse_meta

#: The largest batch an exported program must accept (its dynamic batch dimension's bound).
MAX_EXPORT_BATCH = 64


class TorchDetector:
    """A loaded model file on a device, following the contract."""

    def __init__(self, module: Any, meta: ModelMeta, device: str, half: bool) -> None:
        self._module = module
        self.meta = meta
        self.device = device
        self._dtype = torch.float16 if half else torch.float32
        self.backend = "torch"

    def infer(self, batch: np.ndarray) -> list[RawDetections]:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).to(self._dtype).div_(255.0)
        with torch.inference_mode():
            boxes, scores, classes = self._module(x)
        boxes_np = boxes.float().cpu().numpy()
        scores_np = scores.float().cpu().numpy()
        classes_np = classes.cpu().numpy().astype(np.int64)
        return [RawDetections(boxes_np[i], scores_np[i], classes_np[i]) for i in range(len(batch))]


def load_model(path: Path, device: str, half: bool = False) -> TorchDetector:
    """Load a .pt2 (torch.export) or TorchScript file onto `device`."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    extra: dict[str, Any] = {META_FILE: ""}
    try:
        if path.suffix == ".pt2":
            program = torch.export.load(str(path), extra_files=extra)
            module: Any = program.module()
            module.to(device)
        else:
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
    return TorchDetector(module, meta, device, half)


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
