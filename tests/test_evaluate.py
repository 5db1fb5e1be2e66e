"""mAP@0.5 as VOC defines it."""

from __future__ import annotations

import numpy as np
import pytest

from eagleeye.client.evaluate import Prediction, average_precision, mean_average_precision

TRUTH = {0: np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), 1: np.array([[0, 0, 10, 10]], np.float32)}


def test_perfect_predictions_score_one() -> None:
    preds = [Prediction(0, 0, 0.9, (0, 0, 10, 10)), Prediction(0, 0, 0.8, (20, 20, 30, 30)),
             Prediction(1, 0, 0.7, (0, 0, 10, 10))]
    assert average_precision(preds, TRUTH) == pytest.approx(1.0)


def test_duplicates_and_misses_lower_precision_and_recall() -> None:
    preds = [Prediction(0, 0, 0.9, (0, 0, 10, 10)), Prediction(0, 0, 0.8, (0, 0, 10, 10)),
             Prediction(1, 0, 0.7, (0, 0, 10, 10))]
    # recall 1/3 at precision 1, then 2/3 at precision 2/3; the third box is never found
    assert average_precision(preds, TRUTH) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)


def test_a_box_below_iou_half_is_a_false_positive() -> None:
    assert average_precision([Prediction(1, 0, 0.9, (0, 0, 10, 4))], {1: TRUTH[1]}) == 0.0


def test_mean_over_classes_with_ground_truth() -> None:
    m, per = mean_average_precision([Prediction(0, 1, 0.9, (0, 0, 10, 10))],
                                    [np.array([[0, 0, 10, 10]], np.float32)], [np.array([1])], num_classes=3)
    assert m == 1.0 and per == {1: 1.0}
