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

from model.datasets.segmentation import IGNORE_INDEX, SegmentationDataset, read_png_labels

LAYOUT = "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"
PREPROCESS = "center-crop"
CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)  # of CLASSES, in order
TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
TRAIN_ID[list(LABEL_IDS)] = np.arange(len(LABEL_IDS))


def splits(root: Path) -> list[str]:
    return sorted(d.name for d in (root / "leftImg8bit").iterdir() if d.is_dir() and (root / "gtFine" / d.name).is_dir())


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
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise FileNotFoundError(f"Cityscapes split '{split}' needs {image_dir} and {label_dir}; "
                                f"splits here: {', '.join(splits(root)) or 'none'}")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"no <city>/*_leftImg8bit.png images in {image_dir}")
    labels = [label_dir / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png") for p in images]
    missing = [str(p.relative_to(label_dir)) for p in labels if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} label maps missing in {label_dir}, e.g. {missing[0]} "
                                f"(gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/downloads/)")
    return SegmentationDataset("cityscapes", split, images, labels, CLASSES, IGNORE_INDEX, preprocess, read_train_ids)
