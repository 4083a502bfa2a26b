"""Cityscapes in its release layout, with the benchmark's 19 classes (train ids), void 255.

    cityscapes/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png
    cityscapes/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png

(leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip; splits train 2,975, val 500.)
`*_labelIds.png` holds the 34 label ids; the 19 classes are the ids whose train id in
cityscapesScripts' labels.py is not 255, and every other id is void. The paper resizes and center
crops (the reference: 2048x1024 -> 512x256, the central 256x256).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.datasets.segmentation import (IGNORE_INDEX, SegmentationDataset, label_files, read_png_labels, require_split,
                                         subdirectories)

LAYOUT = "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"
PREPROCESS = "center-crop"
CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)  # of CLASSES, in order
TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
TRAIN_ID[list(LABEL_IDS)] = np.arange(len(LABEL_IDS))


def splits(root: Path) -> list[str]:
    return [d for d in subdirectories(root / "leftImg8bit") if (root / "gtFine" / d).is_dir()]


def recognizes(root: Path) -> bool:
    return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()


def read_train_ids(path: Path) -> np.ndarray:
    label_ids = read_png_labels(path)
    if label_ids.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit label ids, got {label_ids.dtype}")
    return TRAIN_ID[label_ids]


def load(root: Path, split: str, preprocess: str = PREPROCESS) -> SegmentationDataset:
    root = Path(root)
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    require_split("Cityscapes", split, splits(root), image_dir, label_dir)
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"no <city>/*_leftImg8bit.png images in {image_dir}")
    labels = label_files(images, lambda p: label_dir / p.parent.name / p.name.replace("leftImg8bit", "gtFine_labelIds"),
                         label_dir, "gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/downloads/")
    return SegmentationDataset("cityscapes", split, images, labels, CLASSES, IGNORE_INDEX, preprocess, read_train_ids)
