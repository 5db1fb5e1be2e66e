"""The model contract, free of torch so the serving path can name it without importing torch.

A model file carries `eagleeye.json` ({"name", "version", "classes": [...], "input_size": [H, W]}).
Input: float32 RGB in [0, 1], N x 3 x H x W, N dynamic. Outputs: boxes N x K x 4 (x0 y0 x1 y1 in
input pixels), scores N x K in [0, 1], classes N x K (integer indices into `classes`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

META_FILE = "eagleeye.json"


class ModelError(Exception):
    """A model file that cannot be loaded or breaks the contract."""


@dataclass(frozen=True)
class ModelMeta:
    """What a model file says about itself."""

    name: str
    version: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class RawDetections:
    """One image's top-K candidates in model-input pixels, before thresholds."""

    boxes: np.ndarray    # K x 4 float32
    scores: np.ndarray   # K float32
    classes: np.ndarray  # K int64


def parse_meta(text: str, path: Path) -> ModelMeta:
    """A model file's metadata JSON, checked; ModelError naming the file when it is not usable."""
    try:
        raw = json.loads(text)
        classes = tuple(str(c) for c in raw["classes"])
        h, w = (int(v) for v in raw["input_size"])
        meta = ModelMeta(name=str(raw["name"]), version=str(raw["version"]), classes=classes,
                         input_size=(h, w))
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{path}: {META_FILE} is missing or malformed ({e!r}); "
                         "see docs/model-contract.md") from None
    if not meta.classes or h <= 0 or w <= 0:
        raise ModelError(f"{path}: {META_FILE} needs a non-empty class list and a positive input_size")
    return meta


class Detector(Protocol):
    """What the batcher runs: a batch of letterboxed uint8 images in, per-image candidates out."""

    meta: ModelMeta
    device: str
    backend: str  # "torch", "onnxruntime (CPUExecutionProvider)", ...

    def infer(self, batch: np.ndarray) -> list[RawDetections]:
        """Run a batch (N x H x W x 3 uint8) and return N results."""
        ...
