import math

import numpy as np
import pytest

from model.metrics import ConfusionMatrix


def test_iou_by_hand_and_absent_classes_left_out():
    truth = np.array([0, 0, 1, 1, 255, 2])
    pred = np.array([0, 1, 1, 1, 0, 1])
    cm = ConfusionMatrix(4)
    cm.update(truth, pred)
    iou = cm.per_class_iou()
    assert iou[0] == pytest.approx(1 / 2)  # tp 1, union {0,0,1} -> 2
    assert iou[1] == pytest.approx(2 / 4)  # tp 2, fp 2 (pixel 1 and 5), fn 0
    assert iou[2] == 0.0  # present in truth, never predicted
    assert math.isnan(iou[3])  # absent from both: no IoU
    s = cm.scores()
    assert s["miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)


def test_each_evaluation_starts_fresh_and_accumulates_only_its_pixels():
    a = ConfusionMatrix(2)
    a.update(np.array([0, 1]), np.array([0, 1]))
    b = ConfusionMatrix(2)
    b.update(np.array([0, 1]), np.array([1, 0]))
    assert a.scores()["miou"] == 1.0 and b.scores()["miou"] == 0.0


def test_bad_shapes_and_labels():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError):
        cm.update(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        cm.update(np.array([0, 5]), np.array([0, 1]))
