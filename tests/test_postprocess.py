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
