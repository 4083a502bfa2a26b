"""Dense segmentation with a trained head, and its evaluation against ground truth.

`segment_image` is the one way an image of any size is segmented, by the backend (the predictions
it pushes to Label Studio) and offline (`python -m model segment` with an exported head) alike, so
that both give the same classes. Every evaluation builds its own confusion matrix from the
evaluated images only (the reference shares one with training, which leaks training pixels into
the reported mIoU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from model.datasets import IGNORE_INDEX, SegmentationDataset
from model.features import REFERENCE_NOISE, DiffusionFeatureExtractor, FeatureMaps
from model.head import SegmentationHead
from model.metrics import ConfusionMatrix
from model.preprocessing import resize_image

# CamVid's own colours for its 11 classes; other class sets get fixed random ones.
CAMVID_COLORS = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                          [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]],
                         dtype=np.uint8)


def segment(head: SegmentationHead, maps: FeatureMaps) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class [R, R] (int64) and its probability [R, R] (float32)."""
    r = maps.resolution
    log_p = torch.cat([head.log_probs(chunk) for chunk in maps.dense()])
    best = log_p.max(1)
    return best.indices.reshape(r, r).cpu().numpy(), best.values.exp().reshape(r, r).cpu().numpy()


@dataclass(frozen=True)
class ImageSegmentation:
    classes: np.ndarray  # [R, R] class per pixel at the model's resolution
    confidence: np.ndarray  # [R, R] its probability
    width: int  # the image's own size
    height: int

    def full_size(self) -> np.ndarray:
        """[H, W] uint8 classes at the image's size, nearest neighbour (no invented classes)."""
        return np.asarray(Image.fromarray(self.classes.astype(np.uint8)).resize((self.width, self.height),
                                                                                Image.NEAREST))


def segment_image(extractor: DiffusionFeatureExtractor, head: SegmentationHead, image: np.ndarray) -> ImageSegmentation:
    """An RGB image of any size squashed to the model's resolution (bilinear, as the backend stores
    its images), segmented with the reference noise."""
    if head.num_classes > 256:
        raise ValueError(f"a head of {head.num_classes} classes does not fit 8-bit label maps")
    square = resize_image(image, extractor.config.resolution)
    classes, confidence = segment(head, extractor.maps(square, (REFERENCE_NOISE,))[0])
    return ImageSegmentation(classes, confidence, image.shape[1], image.shape[0])


def class_colors(num_classes: int) -> np.ndarray:
    """[C, 3] uint8 display colours: CamVid's for up to 11 classes, else fixed random ones."""
    if num_classes <= len(CAMVID_COLORS):
        return CAMVID_COLORS[:num_classes]
    return np.random.default_rng(0).integers(0, 255, (num_classes, 3)).astype(np.uint8)


def overlay(image: np.ndarray, classes: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each pixel's class colour blended in ([H, W, 3] uint8)."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colors[classes].astype(np.float32)
    return blended.round().clip(0, 255).astype(np.uint8)


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
