"""From top-K candidates to what the client asked for."""

from __future__ import annotations

import numpy as np

from eagleeye.detector.contract import RawDetections
from eagleeye.detector.imaging import Letterbox
from eagleeye.detector.postprocess import Selection, select

IDENTITY = Letterbox(scale=1.0, pad_x=0, pad_y=0, width=100, height=100)
RAW = RawDetections(
    boxes=np.array([[10, 10, 50, 50], [12, 12, 52, 52], [60, 60, 90, 90], [0, 0, 5, 5], [5, 5, 20, 20]], np.float32),
    scores=np.array([0.9, 0.8, 0.7, 0.1, np.nan], np.float32),
    classes=np.array([0, 0, 1, 0, 1]),
)


def test_threshold_nms_and_order() -> None:
    out = select(RAW, IDENTITY, Selection(0.3, 0.5, 10, None))
    assert [(d.class_id, round(d.score, 2)) for d in out] == [(0, 0.9), (1, 0.7)]


def test_nms_is_per_class_and_iou_threshold_is_honoured() -> None:
    assert len(select(RAW, IDENTITY, Selection(0.3, 0.95, 10, None))) == 3


def test_class_filter_and_cap() -> None:
    assert [d.class_id for d in select(RAW, IDENTITY, Selection(0.0, 0.5, 10, frozenset({1})))] == [1]
    assert len(select(RAW, IDENTITY, Selection(0.0, 1.0, 2, None))) == 2


def test_boxes_are_mapped_to_image_pixels() -> None:
    lb = Letterbox(scale=0.5, pad_x=0, pad_y=10, width=200, height=160)
    [d, *_] = select(RAW, lb, Selection(0.3, 0.5, 10, None))
    assert d.box == (20.0, 0.0, 100.0, 80.0)


def _reference_select(raw: RawDetections, lb: Letterbox, sel: Selection) -> list[tuple[object, ...]]:
    """The plain greedy NMS, one candidate at a time (what select computed before it was vectorised)."""
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
        if same:
            b, others = boxes[i], boxes[same]
            ix = np.clip(np.minimum(b[2], others[:, 2]) - np.maximum(b[0], others[:, 0]), 0, None)
            iy = np.clip(np.minimum(b[3], others[:, 3]) - np.maximum(b[1], others[:, 1]), 0, None)
            inter = ix * iy
            area = (b[2] - b[0]) * (b[3] - b[1])
            areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
            if float((inter / np.maximum(area + areas - inter, 1e-9)).max()) > sel.iou_threshold:
                continue
        if boxes[i, 2] <= boxes[i, 0] or boxes[i, 3] <= boxes[i, 1]:
            continue
        chosen.append(i)
    return [(tuple(float(v) for v in boxes[i]), float(raw.scores[idx[i]]), int(raw.classes[idx[i]])) for i in chosen]


def test_the_vectorised_selection_keeps_exactly_what_one_at_a_time_nms_keeps() -> None:
    rng = np.random.default_rng(2026)
    for case in range(400):
        k = int(rng.integers(0, 60))
        x0, y0 = rng.uniform(-20, 250, k), rng.uniform(-20, 250, k)
        w, h = rng.uniform(0, 80, k), rng.uniform(0, 80, k)
        base = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.float32)
        copies = base[rng.integers(0, max(1, k), k // 3)] + rng.normal(0, 3, (k // 3, 4)).astype(np.float32) \
            if k else np.zeros((0, 4), np.float32)  # near-duplicates, as a detector's candidates are
        boxes = np.concatenate([base, copies]).astype(np.float32)
        n = len(boxes)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        scores[rng.uniform(0, 1, n) < 0.05] = np.nan
        raw = RawDetections(boxes=boxes, scores=scores, classes=rng.integers(0, 3, n))
        lb = Letterbox(scale=float(rng.uniform(0.3, 2)), pad_x=float(rng.integers(0, 40)),
                       pad_y=float(rng.integers(0, 40)), width=int(rng.integers(50, 400)),
                       height=int(rng.integers(50, 400)))
        sel = Selection(float(rng.uniform(0, 0.9)), float(rng.uniform(0.05, 1.0)), int(rng.integers(1, 30)),
                        frozenset({0, 2}) if case % 4 == 0 else None)
        got = [(d.box, d.score, d.class_id) for d in select(raw, lb, sel)]
        assert got == _reference_select(raw, lb, sel), case
