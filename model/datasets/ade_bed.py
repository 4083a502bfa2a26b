"""ADE-Bed: the bedroom scenes of ADE20K with the reference's 30 classes, void 255.

From ADE20K's scene-parsing release (ADEChallengeData2016.zip), the images whose scene is `bedroom`:

    ADEChallengeData2016/sceneCategories.txt                          "ADE_train_00000001 airport_terminal"
    ADEChallengeData2016/images/training/ADE_train_00000001.jpg       (and validation/)
    ADEChallengeData2016/annotations/training/ADE_train_00000001.png  (0 other, 1..150 the 150 classes)

The 30 classes are the reference's list (`ade_bedroom_30_class`, the "30 most common object
classes" of the paper, DDPM-seg's ADE-Bedroom-30), found among ADE20K's 150 by name ("chest" is
"chest of drawers", "television" is "television receiver"); every other label is void. The paper's
split (964 train, 650 test) is the reference's curated release, ADE_Bed_256.tar.gz, already
center-cropped to 256x256, which this adapter also reads when named (`--dataset ade-bed`; the
reference lays its other datasets out the same way, so the layout cannot name the dataset):

    ADE_Bed_256/real/train/<name>.jpg  ADE_Bed_256/real/train/<name>.npy   (labels 0..29, 255; and test/)

The paper scales the shorter side to 256 and center crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.datasets.segmentation import (IGNORE_INDEX, SegmentationDataset, label_files, read_png_labels, require_split,
                                         subdirectories)

LAYOUT = "sceneCategories.txt, images/<split>/*.jpg, annotations/<split>/*.png (ADEChallengeData2016)"
PREPROCESS = "center-crop"
SCENE = "bedroom"
# (class, its label in ADEChallengeData2016's annotations = 1 + its row in objectInfo150)
CLASSES_30 = (("wall", 1), ("bed", 8), ("floor", 4), ("table", 16), ("lamp", 37), ("ceiling", 6), ("painting", 23),
              ("windowpane", 9), ("pillow", 58), ("curtain", 19), ("cushion", 40), ("door", 15), ("chair", 20),
              ("cabinet", 11), ("chest", 45), ("mirror", 28), ("rug", 29), ("armchair", 31), ("book", 68),
              ("sconce", 135), ("plant", 18), ("wardrobe", 36), ("clock", 149), ("light", 83), ("flower", 67),
              ("vase", 136), ("fan", 140), ("box", 42), ("shelf", 25), ("television", 90))
CLASSES = tuple(name for name, _ in CLASSES_30)
FROM_ADE150 = np.full(256, IGNORE_INDEX, dtype=np.uint8)
FROM_ADE150[[label for _, label in CLASSES_30]] = np.arange(len(CLASSES_30))


def recognizes(root: Path) -> bool:
    return (root / "sceneCategories.txt").is_file() and (root / "images").is_dir() and (root / "annotations").is_dir()


def read_ade150(path: Path) -> np.ndarray:
    labels = read_png_labels(path)
    if labels.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit ADE20K labels, got {labels.dtype}")
    return FROM_ADE150[labels]


def read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def load_release(root: Path, split: str, preprocess: str) -> SegmentationDataset:
    """The reference's ADE_Bed_256: images and .npy label maps side by side in real/<split>/."""
    directory = root / "real" / split
    require_split("ADE_Bed_256", split, subdirectories(root / "real"), directory)
    images = sorted(directory.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no <name>.jpg images (with <name>.npy label maps) in {directory}")
    labels = label_files(images, lambda p: p.with_suffix(".npy"), directory)
    return SegmentationDataset("ade-bed", split, images, labels, CLASSES, IGNORE_INDEX, preprocess, read_npy)


def load(root: Path, split: str, preprocess: str = PREPROCESS) -> SegmentationDataset:
    root = Path(root)
    if (root / "real").is_dir() and not recognizes(root):
        return load_release(root, split, preprocess)
    if not recognizes(root):
        raise FileNotFoundError(f"{root} is neither ADEChallengeData2016 ({LAYOUT}) nor the reference's ADE_Bed_256 "
                                f"(real/<split>/*.jpg and *.npy)")
    image_dir, label_dir = root / "images" / split, root / "annotations" / split
    require_split("ADE20K", split, subdirectories(root / "images"), image_dir, label_dir)
    scenes = dict(line.split(maxsplit=1) for line in (root / "sceneCategories.txt").read_text().splitlines()
                  if len(line.split()) == 2)
    images = [p for p in sorted(image_dir.glob("*.jpg")) if scenes.get(p.stem) == SCENE]
    if not images:
        raise FileNotFoundError(f"no {SCENE} images in {image_dir} (by sceneCategories.txt)")
    labels = label_files(images, lambda p: label_dir / f"{p.stem}.png", label_dir)
    return SegmentationDataset("ade-bed", split, images, labels, CLASSES, IGNORE_INDEX, preprocess, read_ade150)
