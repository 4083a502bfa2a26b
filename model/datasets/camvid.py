"""CamVid in SegNet's layout: 11 classes, void 11.

    camvid/train/0001TP_006690.png      camvid/trainannot/0001TP_006690.png
    camvid/val/0016E5_07959.png         camvid/valannot/0016E5_07959.png

Squashed to the square by default, as the reference's code and the paper's table 3 do (its text
says center crop: `--preprocess center-crop`).
"""

from __future__ import annotations

from pathlib import Path

from model.datasets.segmentation import SegmentationDataset

LAYOUT = "<split>/ and <split>annot/ with PNGs of the same names (SegNet's CamVid)"
PREPROCESS = "resize"
CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist")
VOID = 11


def splits(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (root / f"{d.name}annot").is_dir())


def recognizes(root: Path) -> bool:
    return bool(splits(root))


def load(root: Path, split: str, preprocess: str = PREPROCESS) -> SegmentationDataset:
    root = Path(root)
    image_dir, label_dir = root / split, root / f"{split}annot"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise FileNotFoundError(f"CamVid split '{split}' needs {image_dir} and {label_dir}; "
                                f"splits here: {', '.join(splits(root)) or 'none'}")
    images = sorted(image_dir.glob("*.png"))
    if not images:
        raise FileNotFoundError(f"no PNG images in {image_dir}")
    labels = [label_dir / p.name for p in images]
    missing = [p.name for p in labels if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} label maps missing in {label_dir}, e.g. {missing[0]}")
    return SegmentationDataset("camvid", split, images, labels, CLASSES, VOID, preprocess)
