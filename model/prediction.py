"""Dense segmentation with a trained head, and its evaluation against ground truth.

Every evaluation builds its own confusion matrix from the evaluated images only (the reference
shares one with training, which leaks training pixels into the reported mIoU).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from model.datasets import IGNORE_INDEX, SegmentationDataset
from model.features import REFERENCE_NOISE, DiffusionFeatureExtractor, FeatureMaps
from model.head import SegmentationHead
from model.metrics import ConfusionMatrix


def segment(head: SegmentationHead, maps: FeatureMaps) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class [R, R] (int64) and its probability [R, R] (float32)."""
    r = maps.resolution
    log_p = torch.cat([head.log_probs(chunk) for chunk in maps.dense()])
    best = log_p.max(1)
    return best.indices.reshape(r, r).cpu().numpy(), best.values.exp().reshape(r, r).cpu().numpy()


def evaluate(head: SegmentationHead, extractor: DiffusionFeatureExtractor, dataset: SegmentationDataset,
             progress: Callable[[int, int], None] | None = None,
             maps_for: Callable[[int], FeatureMaps] | None = None) -> dict:
    """mIoU, pixel accuracy and per-class IoU of `head` on `dataset` at the extractor's resolution."""
    r = extractor.config.resolution
    cm = ConfusionMatrix(dataset.num_classes, IGNORE_INDEX)
    for i in range(len(dataset)):
        maps = maps_for(i) if maps_for else extractor.maps(dataset.image(i, r), (REFERENCE_NOISE,))[0]
        prediction, _ = segment(head, maps)
        cm.update(dataset.labels(i, r), prediction)
        if progress:
            progress(i + 1, len(dataset))
    return cm.scores()
