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


def _pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """IoU of every box with every other (N x N), boxes N x 4 as x0 y0 x1 y1."""
    ix = np.clip(np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0]),
                 0, None)
    iy = np.clip(np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1]),
                 0, None)
    inter = ix * iy
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(areas[:, None] + areas[None, :] - inter, 1e-9))


def select(raw: RawDetections, lb: Letterbox, sel: Selection) -> list[Detection]:
    """Threshold, filter classes, suppress overlaps per class, cap, and map to image pixels.

    Vectorised: one IoU matrix for the candidates above the threshold (a few to the model's top-K),
    then the greedy pass (best first; a box is dropped when it overlaps a kept box of its class by more
    than the IoU threshold, or lies entirely in the letterbox padding) over plain Python values.
    """
    keep = np.isfinite(raw.scores) & (raw.scores >= sel.score_threshold)
    if sel.class_ids is not None:
        keep &= np.isin(raw.classes, list(sel.class_ids))
    idx = np.flatnonzero(keep)
    if not len(idx):
        return []
    idx = idx[np.argsort(-raw.scores[idx], kind="stable")]
    boxes = lb.to_image(raw.boxes[idx])
    classes = raw.classes[idx]
    clash = ((_pairwise_iou(boxes) > sel.iou_threshold) & (classes[:, None] == classes[None, :])).tolist()
    empty = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).tolist()
    chosen: list[int] = []
    for i in range(len(idx)):
        if len(chosen) >= sel.max_detections:
            break
        row = clash[i]
        if empty[i] or any(row[j] for j in chosen):
            continue
        chosen.append(i)
    box_list, scores, class_list = boxes.tolist(), raw.scores[idx].tolist(), classes.tolist()
    return [Detection(box=tuple(box_list[i]), score=scores[i], class_id=int(class_list[i]))
            for i in chosen]
