"""From a model's top-K candidates to the detections a client asked for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eagleeye.detector.contract import RawDetections
from eagleeye.detector.imaging import Letterbox


@dataclass(frozen=True)
class Selection:
    """What to keep: the per-request knobs, already validated."""

    score_threshold: float
    iou_threshold: float
    max_detections: int
    class_ids: frozenset[int] | None  # None: every class


@dataclass(frozen=True)
class Detection:
    """One object in image pixels."""

    box: tuple[float, float, float, float]
    score: float
    class_id: int


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9))


def select(raw: RawDetections, lb: Letterbox, sel: Selection) -> list[Detection]:
    """Threshold, filter classes, suppress overlaps per class, cap, and map to image pixels."""
    keep = np.isfinite(raw.scores) & (raw.scores >= sel.score_threshold)
    if sel.class_ids is not None:
        keep &= np.isin(raw.classes, list(sel.class_ids))
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-raw.scores[idx], kind="stable")]
    boxes = lb.to_image(raw.boxes[idx]) if len(idx) else np.zeros((0, 4), np.float32)
    chosen: list[int] = []
    for i in range(len(idx)):
        if len(chosen) >= sel.max_detections:
            break
        same = [j for j in chosen if raw.classes[idx[j]] == raw.classes[idx[i]]]
        if same and float(_iou(boxes[i], boxes[same]).max()) > sel.iou_threshold:
            continue
        if boxes[i, 2] <= boxes[i, 0] or boxes[i, 3] <= boxes[i, 1]:
            continue  # a box entirely in the letterbox padding
        chosen.append(i)
    return [Detection(box=(float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])),
                      score=float(raw.scores[idx[i]]), class_id=int(raw.classes[idx[i]]))
            for i in chosen]
