"""mAP@0.5 of a served model on held-out generated scenes (the VOC all-point definition)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """One detection of one image."""

    image: int
    class_id: int
    score: float
    box: tuple[float, float, float, float]


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / np.maximum(union - inter, 1e-9))


def average_precision(preds: list[Prediction], truth: dict[int, np.ndarray], iou: float = 0.5) -> float | None:
    """AP of one class: `truth` maps image -> its ground-truth boxes (N x 4). None without ground truth."""
    n_truth = sum(len(b) for b in truth.values())
    if n_truth == 0:
        return None
    matched = {img: np.zeros(len(b), bool) for img, b in truth.items()}
    tp = np.zeros(len(preds))
    for k, p in enumerate(sorted(preds, key=lambda p: -p.score)):
        boxes = truth.get(p.image)
        if boxes is None or not len(boxes):
            continue
        overlaps = _iou(np.array(p.box), boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou and not matched[p.image][best]:
            matched[p.image][best] = True
            tp[k] = 1
    if not len(preds):
        return 0.0
    cum_tp = np.cumsum(tp)
    recall = cum_tp / n_truth
    precision = cum_tp / np.arange(1, len(preds) + 1)
    # All-point interpolation: precision made monotonically decreasing, integrated over recall.
    r = np.concatenate([[0.0], recall, [1.0]])
    prec = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(prec) - 2, -1, -1):
        prec[i] = max(prec[i], prec[i + 1])
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * prec[steps + 1]))


def mean_average_precision(preds: list[Prediction], truth_boxes: list[np.ndarray], truth_classes: list[np.ndarray],
                           num_classes: int, iou: float = 0.5) -> tuple[float, dict[int, float]]:
    """mAP over the classes that have ground truth, and AP per class."""
    per_class: dict[int, float] = {}
    for c in range(num_classes):
        truth = {i: boxes[classes == c] for i, (boxes, classes) in enumerate(zip(truth_boxes, truth_classes))}
        ap = average_precision([p for p in preds if p.class_id == c], truth, iou)
        if ap is not None:
            per_class[c] = ap
    return (float(np.mean(list(per_class.values()))) if per_class else 0.0), per_class
