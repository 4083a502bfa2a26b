"""Segmentation datasets on disk, as lists of (image, label map) pairs in a fixed order.

An adapter knows one dataset's layout and classes. CamVid (SegNet layout) is implemented; ADE-Bed,
Cityscapes and Pascal-Context fit the same `SegmentationDataset` shape: a list of image paths,
a list of label paths, the class names, the void value, and the paper's resize or crop step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from model.preprocessing import PREPROCESSING, remap_void

IGNORE_INDEX = 255

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")


@dataclass
class SegmentationDataset:
    name: str
    split: str
    image_paths: list[Path]
    label_paths: list[Path]
    class_names: tuple[str, ...]
    void: int
    preprocess: str = "resize"  # or "center-crop" (model/preprocessing.py)

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {self.preprocess!r}; choose {', '.join(PREPROCESSING)}")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def key(self, index: int) -> str:
        """A stable name for the image, used to seed its candidate pixels and key caches."""
        tag = self.name if self.preprocess == "resize" else f"{self.name}@{self.preprocess}"
        return f"{tag}/{self.split}/{self.image_paths[index].name}"

    def image(self, index: int, resolution: int) -> np.ndarray:
        with Image.open(self.image_paths[index]) as im:
            return PREPROCESSING[self.preprocess][0](im, resolution)

    def labels(self, index: int, resolution: int) -> np.ndarray:
        """Label map at `resolution` with void mapped to IGNORE_INDEX."""
        with Image.open(self.label_paths[index]) as im:
            return remap_void(PREPROCESSING[self.preprocess][1](np.asarray(im), resolution), self.void, IGNORE_INDEX)

    def head(self, count: int | None) -> SegmentationDataset:
        """The first `count` images in the fixed order (all of them for None)."""
        if count is None:
            return self
        return replace(self, image_paths=self.image_paths[:count], label_paths=self.label_paths[:count])


def load_camvid(root: str | Path, split: str = "train", preprocess: str = "resize") -> SegmentationDataset:
    """CamVid in SegNet's layout: <split>/ images and <split>annot/ label PNGs of the same names."""
    root = Path(root)
    image_dir, label_dir = root / split, root / f"{split}annot"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise FileNotFoundError(f"CamVid split '{split}' needs {image_dir} and {label_dir}")
    images = sorted(image_dir.glob("*.png"))
    if not images:
        raise FileNotFoundError(f"no PNG images in {image_dir}")
    labels = [label_dir / p.name for p in images]
    missing = [p.name for p in labels if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} label maps missing in {label_dir}, e.g. {missing[0]}")
    return SegmentationDataset("camvid", split, images, labels, CAMVID_CLASSES, void=11, preprocess=preprocess)


ADAPTERS = {"camvid": load_camvid}


def load_dataset(root: str | Path, split: str, name: str | None = None, preprocess: str = "resize") -> SegmentationDataset:
    """Load by adapter name, or guess it from the directory name."""
    name = name or Path(root).name.lower()
    if name not in ADAPTERS:
        raise ValueError(f"no adapter for dataset {name!r}; known: {', '.join(ADAPTERS)}")
    return ADAPTERS[name](root, split, preprocess)
