"""The model contract, free of torch so the serving path can name it without importing torch.

A model file carries `eagleeye.json` ({"name", "version", "classes": [...], "input_size": [H, W]}).
Input: float32 RGB in [0, 1], N x 3 x H x W, N dynamic. Outputs: boxes N x K x 4 (x0 y0 x1 y1 in
input pixels), scores N x K in [0, 1], classes N x K (integer indices into `classes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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


class Detector(Protocol):
    """What the batcher runs: a batch of letterboxed uint8 images in, per-image candidates out."""

    meta: ModelMeta
    device: str

    def infer(self, batch: np.ndarray) -> list[RawDetections]:
        """Run a batch (N x H x W x 3 uint8) and return N results."""
        ...
