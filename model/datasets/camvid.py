"""CamVid in SegNet's layout: 11 classes, void 11.

    camvid/train/0001TP_006690.png      camvid/trainannot/0001TP_006690.png
    camvid/val/0016E5_07959.png         camvid/valannot/0016E5_07959.png

Squashed to the square by default, as the reference's code and the paper's table 3 do (its text
says center crop: `--preprocess center-crop`).
"""

from __future__ import annotations

from pathlib import Path

from model.datasets.segmentation import SegmentationDataset, label_files, require_split, subdirectories

LAYOUT = "<split>/ and <split>annot/ with PNGs of the same names (SegNet's CamVid)"
PREPROCESS = "resize"
CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist")
VOID = 11


def splits(root: Path) -> list[str]:
    return [d for d in subdirectories(root) if (root / f"{d}annot").is_dir()]


def recognizes(root: Path) -> bool:
    return bool(splits(root))


def load(root: Path, split: str, preprocess: str = PREPROCESS) -> SegmentationDataset:
    root = Path(root)
    image_dir, label_dir = root / split, root / f"{split}annot"
    require_split("CamVid", split, splits(root), image_dir, label_dir)
    images = sorted(image_dir.glob("*.png"))
    if not images:
        raise FileNotFoundError(f"no PNG images in {image_dir}")
    labels = label_files(images, lambda p: label_dir / p.name, label_dir)
    return SegmentationDataset("camvid", split, images, labels, CLASSES, VOID, preprocess)
