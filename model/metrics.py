"""Segmentation scores from a confusion matrix.

mIoU averages the IoU of the classes that occur in the ground truth or in the prediction of the
evaluated pixels; a class absent from both has no IoU (NaN) and is left out rather than counted
as 0, which would pull the mean down for reasons that have nothing to do with the model.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: truth, cols: prediction

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        truth, prediction = np.asarray(truth).ravel(), np.asarray(prediction).ravel()
        if truth.shape != prediction.shape:
            raise ValueError(f"truth has {truth.size} pixels, prediction {prediction.size}")
        valid = truth != self.ignore_index
        t, p = truth[valid].astype(np.int64), prediction[valid].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or p.max() >= self.num_classes or min(t.min(), p.min()) < 0):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} or be {self.ignore_index}")
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def per_class_iou(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def scores(self) -> dict:
        iou = self.per_class_iou()
        total = self.matrix.sum()
        return {
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pixel_accuracy": float(np.trace(self.matrix) / total) if total else float("nan"),
            "per_class_iou": iou.tolist(),
        }
